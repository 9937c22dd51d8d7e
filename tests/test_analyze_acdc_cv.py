"""The ACDC cross-validation accuracy script runs end to end on two patients with tiny random models."""

from __future__ import annotations

import csv
import importlib.util
import json
import shutil
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

SCRIPT = Path(__file__).resolve().parents[1] / "benchmarks" / "analyze_acdc_cv.py"
TINY = {"embed_dim": 32, "depth": 2, "num_heads": 2}


def _script():
    # Run as `python benchmarks/analyze_acdc_cv.py`, the script sees its folder on sys.path (results.py).
    if str(SCRIPT.parent) not in sys.path:
        sys.path.insert(0, str(SCRIPT.parent))
    spec = importlib.util.spec_from_file_location("analyze_acdc_cv", SCRIPT)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.fixture()
def one_thread():
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


def test_two_patients_each_by_its_held_out_fold(tmp_path, acdc_root, one_thread):
    from cmrfm.clinical.bundle import write_random_weights

    script = _script()
    acdc = tmp_path / "acdc"
    for patient in ("patient001", "patient002"):
        shutil.copytree(acdc_root / patient, acdc / patient)
    cv = tmp_path / "cv"
    split = script.write_splits(acdc, cv, k=2, seed=0)
    folds = json.loads(split.read_text())["folds"]
    assert sorted(p for f in folds for p in f["val"]) == ["patient001", "patient002"]
    for fold in (0, 1):
        (path,) = write_random_weights(
            tmp_path / f"w{fold}", ["sax-seg"], image_size=32, backbone=TINY, seed=fold
        )
        shutil.copy(path, cv / f"fold{fold}.safetensors")
    out = tmp_path / "out"
    summary = script.main(["--cv", str(cv), "--acdc", str(acdc), "--out", str(out)])
    with (out / "per_patient.csv").open() as handle:
        rows = list(csv.DictReader(handle))
    assert sorted(r["patient"] for r in rows) == ["patient001", "patient002"]
    held = {p: f["fold"] for f in folds for p in f["val"]}
    assert all(int(r["fold"]) == held[r["patient"]] for r in rows)
    for row in rows:
        for key in ("dice_LV_ED", "dice_MYO_ES", "dice_RV_ED"):
            assert 0.0 <= float(row[key]) <= 1.0
        assert float(row["lv_edv_ml_ref"]) > float(row["lv_esv_ml_ref"]) > 0  # manual labels
    assert summary["patients"] == 2 and np.isfinite(summary["dice_mean"])
    assert (out / "bland_altman.png").read_bytes()[:4] == b"\x89PNG"
    assert json.loads((out / "summary.json").read_text())["patients"] == 2
    from cmrfm.clinical.features import FEATURE_NAMES

    with (out / script.FEATURES_FILE).open() as handle:
        table = list(csv.DictReader(handle))
    assert all(set(r) == {"subject", *FEATURE_NAMES} for r in table)
    assert {r["subject"] for r in table} <= {"patient001", "patient002"}

    # a rerun reuses each patient's stored result; a changed fold model is analysed again
    analysed = []
    real = script.evaluate_patient

    def counting(patient_dir, *args):
        analysed.append(patient_dir.name)
        return real(patient_dir, *args)

    script.evaluate_patient = counting
    try:
        again = script.main(["--cv", str(cv), "--acdc", str(acdc), "--out", str(out)])
        assert analysed == [] and again["dice_mean"] == summary["dice_mean"]
        shutil.copy(cv / "fold0.safetensors", cv / "fold1.safetensors")
        script.main(["--cv", str(cv), "--acdc", str(acdc), "--out", str(out)])
        assert analysed == [p for p, f in held.items() if f == 1]
    finally:
        script.evaluate_patient = real


def test_reference_volumes_match_perfect_predictions(acdc_root):
    """Dice of the manual labels with themselves is 1 and their function equals the reference."""
    script = _script()
    from cmrfm.data.adapters.acdc import AcdcAdapter

    study = AcdcAdapter.load_study(acdc_root / "patient001", with_labels=True)
    labels = study.series[0].labels
    mask = next(iter(labels.values()))
    assert script.dice(mask == 1, mask == 1) == 1.0
    assert script.dice(mask == 1, np.zeros_like(mask, bool)) == 0.0


def test_rv_insertion_error_is_pairing_free_and_in_mm(acdc_root):
    from cmrfm.clinical.geometry import rv_insertion_points
    from cmrfm.data.adapters.acdc import AcdcAdapter

    script = _script()
    study = AcdcAdapter.load_study(acdc_root / "patient001", with_labels=True)
    mask = next(iter(study.series[0].labels.values()))
    z = mask.shape[2] // 2
    points = rv_insertion_points(mask[..., z].T)
    marks = {"available": True, "slice": z, "rv_insertion_points_px": points[::-1].tolist()}
    assert script.rv_insertion_error_mm(marks, mask, 1.5, 1.5) == 0.0  # order does not matter
    marks["rv_insertion_points_px"] = (points + np.array([[2.0, 0.0], [0.0, 2.0]])).tolist()
    assert script.rv_insertion_error_mm(marks, mask, 1.5, 1.5) == pytest.approx(3.0)  # 2 px × 1.5 mm
    assert np.isnan(script.rv_insertion_error_mm({"available": False}, mask, 1.5, 1.5))
