"""The Sunnybrook benchmark: labels never reach the analysis, and per-frame scores add up."""

import sys
from pathlib import Path

import numpy as np
import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "benchmarks"))

import analyze_sunnybrook as bench

from cmrfm.constants import Label
from cmrfm.data.study import Series, Study


def test_images_only_drops_labels_and_keeps_the_original():
    series = Series(
        name="sax_cine",
        image=np.zeros((4, 4, 2, 3), np.float32),
        affine=np.diag([1.0, 1.0, 8.0, 1.0]),
        labels={0: np.ones((4, 4, 2), np.uint8)},
        metadata={"labelled_slices": {"0": [0, 1]}, "vendor": "GE"},
    )
    study = Study("s", [series])
    bare = bench.images_only(study)
    assert bare.series[0].labels == {} and "labelled_slices" not in bare.series[0].metadata
    assert bare.series[0].metadata["vendor"] == "GE"
    assert study.series[0].labels and "labelled_slices" in study.series[0].metadata  # untouched


def test_frame_scores_on_contoured_slices_only():
    ref = np.zeros((4, 4, 3), np.uint8)
    pred = np.zeros_like(ref)
    ref[:2, :, 0] = Label.LV  # 8 voxels
    pred[:1, :, 0] = Label.LV  # 4 voxels, all inside
    ref[2:, :, 0] = Label.MYO
    pred[2:, :, 0] = Label.MYO
    ref[:, :, 1] = Label.LV  # slice 1 contoured with endocardium only
    pred[:, :, 1] = Label.LV
    pred[:, :, 2] = Label.LV  # slice 2 not contoured: ignored
    scores = bench.frame_scores(pred, ref, [0, 1], voxel_ml=0.5)
    assert scores["dice_LV"] == pytest.approx(2 * 20 / (20 + 24))
    assert scores["dice_MYO"] == pytest.approx(1.0)  # only the slice with an epicardial contour
    assert scores["lv_ml_pred"] == pytest.approx(10.0) and scores["lv_ml_ref"] == pytest.approx(12.0)
