"""The LesionMix ablation script: two arms differing only in LesionMix, shared overrides applied."""

import json
import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "benchmarks"))

import ablation_lesionmix


def test_two_arms_share_overrides_and_are_read_back(tmp_path, monkeypatch, capsys):
    argv = [
        "ablation_lesionmix.py",
        "--steps=2",
        "--batch-size=2",
        "--image-size=32",
        "--folds=2",
        "--run-folds=0",
        f"--out={tmp_path}",
        "--quiet",
        "--no-write",
        "--set=synthetic=true",
        "--set=amp=off",
        "--set=backbone.embed_dim=32",
        "--set=backbone.depth=2",
        "--set=backbone.num_heads=2",
        "--set=task_options.lesion_oversample=2",
    ]
    monkeypatch.setattr(sys, "argv", argv)
    ablation_lesionmix.main()
    first = capsys.readouterr().out
    configs = {}
    for arm in ("lesionmix0", "lesionmix0.5"):
        card = json.loads((tmp_path / arm / "fold0" / "model.json").read_text())
        configs[arm] = card["task_config"]
        assert card["steps"] == 2 and card["architecture"]["config"]["embed_dim"] == 32
    assert configs["lesionmix0"]["lesionmix"] == 0 and configs["lesionmix0.5"]["lesionmix"] == 0.5
    assert configs["lesionmix0"]["lesion_oversample"] == configs["lesionmix0.5"]["lesion_oversample"] == 2
    assert "shared overrides" in first and "Smoke-run budget" in first
    # a second call reads both arms back instead of retraining
    (tmp_path / "lesionmix0" / "fold0" / "model.safetensors").unlink()
    ablation_lesionmix.main()
    assert not (tmp_path / "lesionmix0" / "fold0" / "model.safetensors").exists()
    assert "| 0 |" in capsys.readouterr().out


def test_unknown_override_is_a_clear_error(tmp_path, monkeypatch):
    from cmrfm.errors import ConfigError

    argv = ["ablation_lesionmix.py", "--steps=2", f"--out={tmp_path}", "--no-write", "--set=nope=1"]
    monkeypatch.setattr(sys, "argv", argv)
    with pytest.raises(ConfigError, match="nope"):
        ablation_lesionmix.main()
