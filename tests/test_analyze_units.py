"""Unit tests of the analysis pieces: post-processing, measurements, grouping, geometry, OOD."""

from __future__ import annotations

import dataclasses
from pathlib import Path

import numpy as np
import pytest

from cmrfm.clinical.analyze import (
    AnalyzeOptions,
    SeriesInfo,
    cine_function,
    group_sax_frames,
    landmarks_and_orientation,
    ood_assessment,
    unique_folder,
)
from cmrfm.clinical.bundle import ModelBundle
from cmrfm.clinical.postprocess import clean_stack
from cmrfm.constants import Label, Sequence, View
from cmrfm.data.study import Series
from cmrfm.tasks.items import phantom_slice


def _ring_stack(z: int = 3, size: int = 48) -> np.ndarray:
    """LV disc, myocardial ring, RV crescent on each slice: ``(H, W, Z)``."""
    rng = np.random.default_rng(0)
    return np.stack([phantom_slice(rng, size, lv_radius=8.0, wall=4.0)["mask"] for _ in range(z)], axis=-1)


def test_clean_stack_keeps_a_clean_heart_unchanged():
    mask = _ring_stack()
    np.testing.assert_array_equal(clean_stack(mask), mask)


def test_clean_stack_drops_blobs_fills_holes_and_detached_wall():
    mask = _ring_stack()
    mask[1:3, 1:3, 1] = Label.LV  # spurious LV blob in a corner
    mask[45:47, 45:47, 0] = Label.RV  # spurious RV blob
    lv = np.argwhere(mask[..., 1] == Label.LV)
    cy, cx = lv.mean(axis=0).round().astype(int)
    mask[cy, cx, 1] = Label.BACKGROUND  # hole in the blood pool
    mask[40:43, 2:5, 2] = Label.MYO  # wall piece far from the LV
    out = clean_stack(mask)
    assert out[1:3, 1:3, 1].max() == 0 and out[45:47, 45:47, 0].max() == 0
    assert out[cy, cx, 1] == Label.LV
    assert out[40:43, 2:5, 2].max() == 0
    assert (out == Label.MYO).sum() == (_ring_stack() == Label.MYO).sum()


def test_clean_stack_keeps_scar_in_the_wall_and_drops_floating_scar():
    mask = _ring_stack()
    wall = np.argwhere(mask[..., 0] == Label.MYO)[:5]
    mask[wall[:, 0], wall[:, 1], 0] = Label.INFARCT
    mask[2:4, 40:42, 0] = Label.INFARCT  # outside the heart
    out = clean_stack(mask)
    assert (out[wall[:, 0], wall[:, 1], 0] == Label.INFARCT).all()
    assert out[2:4, 40:42, 0].max() == 0


class _Run:
    """The part of a SegRun that :func:`cine_function` reads."""

    def __init__(self, series: Series, labels: np.ndarray) -> None:
        self.series, self.labels, self.parts = series, labels, []


def _cine(num_frames: int = 5, gaps: tuple[float, ...] = (10.0, 10.0, 6.0)) -> tuple[Series, np.ndarray]:
    z = len(gaps) + 1
    positions = np.zeros((z, 3))
    positions[1:, 2] = np.cumsum(gaps)
    series = Series(
        "sax",
        np.zeros((48, 48, z, num_frames), np.float32),
        np.diag([1.5, 1.5, 10.0, 1.0]),
        sequence=Sequence.CINE,
        view=View.SAX,
        slice_positions=positions,
    )
    labels = np.zeros(series.shape, np.uint8)  # (X, Y, Z, T)
    for t in range(num_frames):
        r = 12 - 1.5 * min(t, num_frames - 1 - t)  # largest at frame 0, smallest mid-cycle
        yy, xx = np.mgrid[:48, :48]
        disc = (yy - 24) ** 2 + (xx - 24) ** 2 < r**2
        ring = ((yy - 24) ** 2 + (xx - 24) ** 2 < (r + 4) ** 2) & ~disc
        labels[..., t][disc] = Label.LV
        labels[..., t][ring] = Label.MYO
        labels[:4, :4, :, t] = Label.RV
    return series, labels


def test_cine_function_uses_the_true_slice_spacing_and_finds_ed_es():
    series, labels = _cine()
    m = cine_function(_Run(series, labels), AnalyzeOptions(height_cm=180, weight_kg=80), [])
    assert m["ed_frame"] == 0 and m["es_frame"] == 2
    dz = 10.0  # median of the gaps (10, 10, 6), not the affine's or the thickness
    voxel_ml = 1.5 * 1.5 * dz / 1000
    assert m["lv_edv_ml"] == pytest.approx((labels[..., 0] == Label.LV).sum() * voxel_ml, abs=0.06)
    assert m["lv_esv_ml"] < m["lv_edv_ml"] and 0 < m["lv_ef_pct"] < 100
    assert m["lv_mass_g"] == pytest.approx((labels[..., 0] == Label.MYO).sum() * voxel_ml * 1.05, abs=0.06)
    assert m["rv_ef_pct"] == 0.0
    assert m["lv_edv_ml_m2"] == pytest.approx(m["lv_edv_ml"] / m["bsa_m2"], abs=0.06)
    assert m["flags"]["lv_ef_pct"]["flag"] in ("low", "normal", "high")
    assert len(m["lv_volume_curve_ml"]) == 5


def test_ed_es_pair_with_a_failed_lv_warns_instead_of_reporting_silently():
    """Two frames whose LV is larger in the frame LV+RV calls ES: negative LVEF, and a warning."""
    series, labels = _cine(num_frames=5)
    pair_labels = labels[..., [0, 2]].copy()  # frame 0 = ED (large LV), frame 2 = ES
    pair_labels[..., 1][pair_labels[..., 1] == Label.MYO] = Label.LV  # ES: wall swallowed by the LV
    pair_labels[:20, :20, :, 0] = Label.RV  # a large RV makes frame 0 ED by LV+RV volume
    pair = dataclasses.replace(series, image=series.image[..., [0, 2]], frame_times_ms=None)
    warnings: list[str] = []
    m = cine_function(_Run(pair, pair_labels), AnalyzeOptions(), warnings)
    assert m["ed_frame"] == 0 and m["lv_ef_pct"] < 0
    assert any("LV end-systolic volume exceeds" in w for w in warnings), warnings


def test_cine_function_without_lv_gives_no_numbers():
    series, labels = _cine()
    warnings: list[str] = []
    m = cine_function(_Run(series, np.zeros_like(labels)), AnalyzeOptions(), warnings)
    assert m["lv_edv_ml"] is None and m["lv_ef_pct"] is None and warnings


def test_single_frames_of_one_grid_form_a_pseudo_cine_and_duplicates_alias_a_4d_cine():
    series, _ = _cine(num_frames=3)
    series.image = np.random.default_rng(0).random(series.shape).astype(np.float32)
    ed = series.frame(0)
    ed.name = "p_frame01"
    es = series.frame(2)
    es.name = "p_frame03"
    infos = [SeriesInfo(s, Sequence.CINE, View.SAX, "reader") for s in (ed, es)]
    groups, aliased = group_sax_frames(infos)
    assert len(groups) == 1 and not aliased
    combined, parts = groups[0]
    assert combined.num_frames == 2 and [p.name for p in parts] == ["p_frame01", "p_frame03"]
    infos.append(SeriesInfo(series, Sequence.CINE, View.SAX, "reader"))
    groups, aliased = group_sax_frames(infos)
    assert [g[0].name for g in groups] == ["sax"]
    assert sorted(i.alias for i in aliased) == [("sax", 0), ("sax", 2)]


def test_landmarks_from_the_mask_at_a_mid_ventricular_slice():
    rng = np.random.default_rng(1)
    s = phantom_slice(rng, 64)
    mask = np.stack([s["mask"].T] * 3, axis=-1)[..., None]  # (X, Y, Z, 1)
    series = Series("sax", np.zeros(mask.shape, np.float32), np.diag([1.5, 1.5, 8.0, 1.0]))

    class Run:
        pass

    run = Run()
    run.series, run.labels = series, mask
    out = landmarks_and_orientation(run, 0, ModelBundle(folder=Path(".")))
    assert out["available"] and out["source"] == "segmentation" and out["slice"] == 1
    points = np.array(out["rv_insertion_points_px"])
    truth = s["landmarks"]
    error = min(np.abs(points - truth).max(), np.abs(points[::-1] - truth).max())  # order is a convention
    assert error < 4.0
    assert abs(np.linalg.norm(out["septal_direction_world"]) - 1) < 1e-3


def test_landmarks_model_is_a_second_opinion_beside_the_mask():
    """Mask points are kept; a landmarks model's points are reported with their distance to them."""
    from types import SimpleNamespace

    from cmrfm.clinical.geometry import rv_insertion_points

    s = phantom_slice(np.random.default_rng(1), 64)
    mask = np.stack([s["mask"].T] * 3, axis=-1)[..., None]  # (X, Y, Z, 1)
    series = Series("sax", np.zeros(mask.shape, np.float32), np.diag([1.5, 1.5, 8.0, 1.0]))
    on_mask = rv_insertion_points(mask[..., 1, 0].T)
    record = SimpleNamespace(out_size=64, origin=(0.0, 0.0), step=(1.0, 1.0))
    run = SimpleNamespace(
        series=series, labels=mask, prepared=SimpleNamespace(record=record, images={0: np.zeros((3, 64, 64))})
    )
    model_points = on_mask[::-1] + np.array([3.0, 4.0])  # swapped order, 5 px = 7.5 mm off
    bundle = SimpleNamespace(
        has=lambda task: task == "landmarks",
        models={"landmarks": SimpleNamespace(preprocess=SimpleNamespace(size=64))},
        landmarks=lambda task, images: np.concatenate([model_points, np.zeros((3, 2))])[None],
    )
    out = landmarks_and_orientation(run, 0, bundle)
    assert out["source"] == "segmentation"
    np.testing.assert_allclose(out["rv_insertion_points_px"], on_mask, atol=0.01)
    assert out["landmarks_model_distance_mm"] == pytest.approx(7.5, abs=0.01)
    apart = np.where(mask == 3, 0, mask)
    apart[:4, :4] = 3  # an RV blob far from the wall: no junction on the mask
    run.labels = apart
    out = landmarks_and_orientation(run, 0, bundle)
    assert out["source"] == "landmarks" and "landmarks_model_distance_mm" not in out
    np.testing.assert_allclose(out["rv_insertion_points_px"], model_points, atol=0.01)


def test_ood_flags_implausible_geometry_without_models():
    series = Series("sax", np.zeros((32, 32, 4, 1), np.float32), np.diag([9.0, 9.0, 8.0, 1.0]), view=View.SAX)
    out = ood_assessment([], [series], ModelBundle(folder=Path(".")))
    assert out["flag"] and "pixel size" in out["reasons"][0] and not out["assessed"]


def test_ood_compares_each_series_with_its_own_models_threshold():
    """A cine run and an LGE run are each held to their own model card's calibrated threshold."""
    from types import SimpleNamespace

    from cmrfm.clinical.bundle import LoadedTask

    def run(name: str, task: str, entropy: float):
        series = SimpleNamespace(name=name)
        return SimpleNamespace(task_id=task, series=series, mean_entropy=lambda frames: entropy), [0]

    bundle = ModelBundle(folder=Path("."))
    for task, card in (("sax-seg", {"ood": {"entropy_max": 0.7}}), ("lge-seg", {})):
        bundle.models[task] = LoadedTask(task, None, card, Path(task), (), None)
    out = ood_assessment([run("cine", "sax-seg", 0.6), run("lge", "lge-seg", 0.5)], [], bundle)
    # 0.6 is within the cine model's 0.7; the LGE model has no calibration: generic default 0.35
    assert out["flag"] and len(out["reasons"]) == 1 and out["reasons"][0].startswith("lge:")
    assert [e["threshold_source"] for e in out["per_series"]] == ["model card", "default"]
    assert out["mean_entropy"] == pytest.approx(0.55)
    bundle.models["lge-seg"].card["ood"] = {"entropy_max": 0.6}
    assert not ood_assessment([run("cine", "sax-seg", 0.6), run("lge", "lge-seg", 0.5)], [], bundle)["flag"]


def test_unique_folder_suffixes(tmp_path):
    assert unique_folder(tmp_path, "a") == tmp_path / "a"
    (tmp_path / "a").mkdir()
    (tmp_path / "a-2").mkdir()
    assert unique_folder(tmp_path, "a") == tmp_path / "a-3"


def test_infarct_percent_counts_scar_and_mvo_within_the_whole_myocardium():
    from cmrfm.cli.analyze import infarct_percent
    from cmrfm.constants import Label

    labels = np.zeros((4, 4, 2), np.uint8)
    labels[0, :, 0] = Label.MYO  # 4 px
    labels[1, :2, 0] = Label.INFARCT  # 2 px
    labels[1, 2:, 1] = Label.MVO  # 2 px
    labels[2, :, 1] = Label.LV  # blood pool: not myocardium
    assert infarct_percent(labels) == 50.0
    assert infarct_percent(np.zeros((2, 2), np.uint8)) == 0.0


def test_series_labels_from_probabilities_beat_labels_from_the_model_grid():
    """A model that gets every boundary right (soft area fractions on the coarse grid) maps back
    closer to the fine manual labels through its probabilities than through its arg-max labels."""
    from test_preprocess import dice, heart_labels, series_for

    from cmrfm.clinical.analyze import source_labels
    from cmrfm.data.preprocess import PreprocessConfig, forward_image, invert_mask, plan_preprocessing

    spacing = (0.7, 0.7)  # finer than the 1.5 mm model grid, as on many ACDC studies
    labels = heart_labels(spacing)  # (X, Y, Z) internal ids: 0 BG, LV, MYO, RV
    record = plan_preprocessing(series_for(labels, spacing), PreprocessConfig(size=128))
    label_ids = np.array([0, Label.LV, Label.MYO, Label.RV])
    record_01 = dataclasses.replace(record, intensity_low=0.0, intensity_high=1.0)
    probs = np.stack(
        [forward_image((labels == k).astype(np.float32), record_01) for k in label_ids], axis=1
    )  # (Z, C, H, W) area fractions
    from_probs = source_labels(probs, label_ids, record)
    grid = clean_stack(label_ids[probs.argmax(axis=1)].transpose(1, 2, 0))  # (H, W, Z)
    from_grid = invert_mask(grid.transpose(2, 0, 1), record)
    assert from_probs.shape == labels.shape
    scores_probs = [dice(from_probs, labels, k) for k in (Label.LV, Label.MYO, Label.RV)]
    scores_grid = [dice(from_grid, labels, k) for k in (Label.LV, Label.MYO, Label.RV)]
    assert min(scores_probs) > 0.99, scores_probs  # the grid round trip alone costs ~0.02 (myocardium)
    assert np.mean(scores_probs) > np.mean(scores_grid) + 0.005, (scores_probs, scores_grid)
    assert (from_probs[:5] == 0).all()  # outside the crop: background
