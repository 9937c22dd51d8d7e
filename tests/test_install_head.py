"""scripts/install_head.py installs a run's head with a completed card and never overwrites silently."""

from __future__ import annotations

import importlib.util
from pathlib import Path

import pytest

from cmrfm.engine.checkpoint import load_weights
from cmrfm.engine.finetune import FinetuneConfig, finetune

SCRIPT = Path(__file__).resolve().parents[1] / "scripts" / "install_head.py"


def _script():
    spec = importlib.util.spec_from_file_location("install_head", SCRIPT)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_install_with_status_and_cv_calibrated_ood(tmp_path):
    run = finetune(
        FinetuneConfig(
            task="sax-seg",
            synthetic=True,
            image_size=32,
            backbone={"embed_dim": 32, "depth": 2, "num_heads": 2},
            steps=1,
            batch_size=2,
            folds=2,
            fold=-1,
            out=str(tmp_path / "run"),
            amp="off",
        ),
        progress=False,
    )
    cv = tmp_path / "cv"
    cv.mkdir()
    (cv / "per_subject_all_folds.csv").write_text("subject,mean_entropy\na,0.5\nb,nan\nc,0.6\n")
    script = _script()
    weights = tmp_path / "weights"
    path = script.install(run.out, "sax-seg", "test head", cv, replace=False, weights=weights)
    _, card = load_weights(path)
    assert card["status"] == "test head" and card["ood"]["entropy_max"] == pytest.approx(0.72)
    assert "2 held-out volumes" in card["ood"]["calibration"]
    with pytest.raises(SystemExit, match="--replace"):
        script.install(run.out, "sax-seg", "again", None, replace=False, weights=weights)
    with pytest.raises(SystemExit, match="not 'lge-seg'"):
        script.install(run.out, "lge-seg", "wrong", None, replace=True, weights=weights)


def test_card_entries_parse_json_values():
    script = _script()
    assert script.card_entries(["infarct_present_min_ml=0.6", "note=plain text", "flags=[1,2]"]) == {
        "infarct_present_min_ml": 0.6,
        "note": "plain text",
        "flags": [1, 2],
    }
    with pytest.raises(SystemExit, match="KEY=VALUE"):
        script.card_entries(["no-equals-sign"])
