"""The simulated-study accuracy benchmark: weights parsing and its error table."""

import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "benchmarks"))

import analyze_sim_accuracy as bench
from results import weight_folders


def _row(seed, weights, measured, truth):
    row = {"seed": seed, "group": "NOR", "weights": weights}
    for key in bench.MEASURES:
        row[f"{key}_truth"] = truth
        row[f"{key}_measured"] = measured
    return row


def test_weights_pairs_and_error_table():
    assert weight_folders([], Path("/w")) == {"shipped": Path("/w")}
    assert weight_folders(["a=/x", "b=/y"], Path("/w")) == {"a": Path("/x"), "b": Path("/y")}
    with pytest.raises(SystemExit, match="NAME=DIR"):
        weight_folders(["no-folder"], Path("/w"))
    rows = [
        _row(1, "a", 60.0, 50.0),
        _row(2, "a", 40.0, 50.0),
        _row(1, "b", 52.0, 50.0),
        _row(2, "b", None, 50.0),
    ]
    stats = bench.summary(rows, ["a", "b"])
    assert stats["a"]["lv_ef_pct_mae"] == pytest.approx(10.0) and stats["a"][
        "lv_ef_pct_bias"
    ] == pytest.approx(0.0)
    assert stats["b"]["lv_ef_pct_mae"] == pytest.approx(2.0)  # a missing measurement is left out
    text = bench.section(rows, {"a": Path("/x"), "b": Path("/y")}, [1, 2], "cmd")
    assert text.startswith(bench.HEADING)
    assert "| lv_ef_pct | 10.0 (+0.0) | 2.0 (+2.0) |" in text
