"""Summaries of ``benchmarks/tasks_cv.py`` checked against hand-computed cases."""

from __future__ import annotations

import importlib.util
import sys
from pathlib import Path

import pytest

SCRIPT = Path(__file__).resolve().parents[1] / "benchmarks" / "tasks_cv.py"


def _script():
    if str(SCRIPT.parent) not in sys.path:
        sys.path.insert(0, str(SCRIPT.parent))  # the script imports its sibling results.py
    spec = importlib.util.spec_from_file_location("tasks_cv", SCRIPT)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_lesion_summary_hand_computed():
    rows = [  # two infarct cases (one found, one missed), two normal cases (one false alarm < 1 mL)
        {"ml_ref_infarct": "2", "ml_pred_infarct": "3", "dice_infarct": "0.7"},
        {"ml_ref_infarct": "0", "ml_pred_infarct": "0.5", "dice_infarct": "1.0"},
        {"ml_ref_infarct": "5", "ml_pred_infarct": "0.2", "dice_infarct": "0.0"},
        {"ml_ref_infarct": "0", "ml_pred_infarct": "0", "dice_infarct": "1.0"},
    ]
    summary = _script()._lesion_summary(rows)
    assert summary["dice_infarct (infarct cases)"][0] == pytest.approx(0.35)  # normals excluded
    assert summary["infarct present accuracy (seg ≥ 1.0 mL)"][0] == pytest.approx(0.75)
    # positive scores {3, 0.2} vs negative {0.5, 0}: 3 of 4 pairs ordered right
    assert summary["infarct present AUROC (predicted mL)"][0] == pytest.approx(0.75)
