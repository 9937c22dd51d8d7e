"""Invertible preprocessing: label round trips, crop centring, intensity, centre finders."""

from __future__ import annotations

import dataclasses
import json

import numpy as np
import pytest

from cmrfm.constants import Label, Sequence
from cmrfm.data.preprocess import (
    CENTRE_FINDERS,
    PreprocessConfig,
    PreprocessRecord,
    find_heart_centre,
    forward_image,
    forward_mask,
    heart_centre_of_masks,
    invert_intensity,
    invert_mask,
    invert_probs,
    plan_preprocessing,
    preprocess_series,
    recentre,
    register_centre_finder,
)
from cmrfm.data.study import Series
from cmrfm.errors import ConfigError

FOV_MM = (320.0, 280.0)
HEART_MM = (150.0, 160.0)  # heart centre, off the FOV centre


def heart_labels(spacing: tuple[float, float], n_slices: int = 3, lv_mm: float = 25.0) -> np.ndarray:
    """Internal labels (X, Y, Z) of a realistic heart: LV r=25 mm, MYO 8 mm thick, RV beside it."""
    nx, ny = round(FOV_MM[0] / spacing[0]), round(FOV_MM[1] / spacing[1])
    x = (np.arange(nx) + 0.5) * spacing[0]
    y = (np.arange(ny) + 0.5) * spacing[1]
    xx, yy = np.meshgrid(x, y, indexing="ij")
    r = np.hypot(xx - HEART_MM[0], yy - HEART_MM[1])
    rv = np.hypot((xx - HEART_MM[0] + 42) / 1.2, yy - HEART_MM[1] + 5) < 30
    planes = []
    for z in range(n_slices):
        lv = lv_mm * (1 - 0.15 * z)
        plane = np.zeros((nx, ny), np.uint8)
        plane[rv] = Label.RV
        plane[r < lv + 8] = Label.MYO
        plane[r < lv] = Label.LV
        planes.append(plane)
    return np.stack(planes, axis=-1)


def series_for(labels: np.ndarray, spacing: tuple[float, float], frames: int = 1, seed: int = 0) -> Series:
    rng = np.random.default_rng(seed)
    intensity = np.array([30, 250, 80, 220, 0, 0, 0, 0], np.float32)
    image = intensity[labels][..., None].repeat(frames, axis=-1) + rng.normal(0, 5, (*labels.shape, frames))
    affine = np.diag([spacing[0], spacing[1], 8.0, 1.0])
    return Series(name="sax_cine", image=image, affine=affine, sequence=Sequence.CINE, labels={0: labels})


def dice(a: np.ndarray, b: np.ndarray, label: int) -> float:
    a, b = a == label, b == label
    return 2 * np.count_nonzero(a & b) / max(1, np.count_nonzero(a) + np.count_nonzero(b))


@pytest.mark.parametrize("spacing", [(1.5, 1.5), (1.5625, 1.5625), (1.9, 1.9), (1.7, 1.6), (2.5, 1.8)])
def test_label_round_trip_exact_without_downsampling(spacing):
    labels = heart_labels(spacing)
    series = series_for(labels, spacing)
    record = plan_preprocessing(series, PreprocessConfig(size=128))
    assert record.label_inverse_is_exact
    forward = forward_mask(labels, record)
    assert forward.shape == (3, 128, 128) and forward.dtype == np.uint8
    np.testing.assert_array_equal(invert_mask(forward, record), labels)
    for z in range(labels.shape[2]):  # per 2D slice too
        np.testing.assert_array_equal(invert_mask(forward[z], record), labels[..., z])


@pytest.mark.parametrize("spacing", [(0.7, 0.7), (1.0, 1.0), (1.25, 1.4), (1.49, 1.49)])
def test_label_round_trip_downsampling_dice(spacing):
    labels = heart_labels(spacing)
    record = plan_preprocessing(series_for(labels, spacing), PreprocessConfig(size=128))
    assert not record.label_inverse_is_exact
    back = invert_mask(forward_mask(labels, record), record)
    scores = [dice(back, labels, k) for k in (Label.LV, Label.MYO, Label.RV)]
    assert np.mean(scores) > 0.98, scores
    assert min(scores) > 0.96, scores


def test_identity_spacing_is_a_pure_crop():
    labels = heart_labels((1.5, 1.5))
    series = series_for(labels, (1.5, 1.5))
    record = plan_preprocessing(series, PreprocessConfig(size=96))
    assert record.step == (1.0, 1.0) and float(record.origin[0]).is_integer()
    out = forward_image(series.image[..., 0], record)  # (Z, H, W)
    x0, y0 = int(record.origin[0]), int(record.origin[1])
    crop = series.image[x0 : x0 + 96, y0 : y0 + 96, :, 0].transpose(2, 1, 0)  # (Z, H=Y, W=X)
    np.testing.assert_allclose(invert_intensity(out, record), crop, rtol=1e-5, atol=1e-3)


def test_crop_is_centred_on_the_heart_and_layout_is_yx():
    spacing = (1.0, 1.2)
    labels = heart_labels(spacing, n_slices=1)
    record = plan_preprocessing(series_for(labels, spacing), PreprocessConfig(size=128))
    assert record.centre_source == "labels"
    out = forward_mask(labels[..., 0], record)  # (H, W) = (Y, X)
    heart = np.argwhere(np.isin(out, [Label.LV, Label.MYO, Label.RV]))
    h, w = heart.mean(axis=0)
    assert abs(h - 63.5) < 2 and abs(w - 63.5) < 2
    # the RV lies toward smaller x (left in W) of the LV in the phantom
    assert np.argwhere(out == Label.RV)[:, 1].mean() < np.argwhere(out == Label.LV)[:, 1].mean()
    # output pixels are 1.5 mm: the LV radius (25 mm) spans ≈ 33 pixels across
    assert abs(np.count_nonzero(out == Label.LV) - np.pi * (25 / 1.5) ** 2) < 40


def test_recentre_moves_only_the_crop():
    """A plan re-centred on the labelled heart equals the plan made from the labels."""
    spacing = (1.2, 1.2)
    labels = heart_labels(spacing, n_slices=2)
    series = series_for(labels, spacing)
    config = PreprocessConfig(size=96)
    from_labels = plan_preprocessing(series, config)
    heuristic = plan_preprocessing(dataclasses.replace(series, labels={}), config)
    assert heuristic.centre_source != "labels"
    centre = heart_centre_of_masks([labels])
    assert centre == pytest.approx(from_labels.centre)
    moved = recentre(heuristic, centre, "segmentation")
    assert moved.origin == from_labels.origin and moved.centre_source == "segmentation"
    assert (moved.step, moved.intensity_low, moved.intensity_high) == (
        heuristic.step,
        heuristic.intensity_low,
        heuristic.intensity_high,
    )
    assert heart_centre_of_masks([np.zeros((8, 8, 2), np.uint8)]) is None


def test_intensity_percentiles_and_inverse():
    spacing = (1.5, 1.5)
    series = series_for(heart_labels(spacing), spacing)
    record = plan_preprocessing(series, PreprocessConfig(percentiles=(1.0, 99.0)))
    low, high = np.percentile(series.image, [1, 99])
    assert record.intensity_low == pytest.approx(low) and record.intensity_high == pytest.approx(high)
    values = np.array([low, high, 0.5 * (low + high)])
    assert invert_intensity((values - low) / (high - low), record) == pytest.approx(values)
    clipped = plan_preprocessing(series, PreprocessConfig(clip=True))
    out = forward_image(series.image[..., 0], clipped)
    assert out.min() >= 0 and out.max() <= 1


def test_outside_the_crop_is_background_and_probs_invert():
    spacing = (1.5, 1.5)
    labels = heart_labels(spacing, n_slices=1)[..., 0]
    record = plan_preprocessing(series_for(labels[..., None], spacing), PreprocessConfig(size=32))
    back = invert_mask(np.full((32, 32), Label.MYO, np.uint8), record)
    assert back.shape == labels.shape
    assert np.count_nonzero(back) == 32 * 32
    probs = np.zeros((4, 32, 32), np.float32)
    probs[1] = 1.0
    inv = invert_probs(probs, record)
    assert inv.shape == (4, *labels.shape) and inv[1].max() == pytest.approx(1.0)
    with pytest.raises(ValueError):
        invert_mask(np.zeros((31, 32), np.uint8), record)


def test_record_json_round_trip():
    spacing = (1.3, 1.3)
    record = plan_preprocessing(series_for(heart_labels(spacing), spacing))
    again = PreprocessRecord.from_dict(json.loads(json.dumps(record.to_dict())))
    assert again == record


def test_unknown_spacing_keeps_pixels_unless_assumed():
    labels = heart_labels((1.0, 1.0), n_slices=1)
    series = dataclasses.replace(series_for(labels, (1.0, 1.0)), spacing_known=False, affine=np.eye(4))
    assert plan_preprocessing(series).step == (1.0, 1.0)
    assumed = plan_preprocessing(series, PreprocessConfig(unknown_spacing_mm=0.75))
    assert assumed.step == pytest.approx((2.0, 2.0)) and not assumed.spacing_known


def _beating(spacing=(1.5, 1.5), frames=10) -> tuple[Series, tuple[float, float]]:
    """A cine whose LV radius oscillates; bright static distractor near the FOV edge."""
    volumes = []
    for t in range(frames):
        lv = 25 - 8 * np.sin(np.pi * t / frames)
        volumes.append(heart_labels(spacing, n_slices=2, lv_mm=lv))
    labels = np.stack(volumes, axis=-1)  # (X, Y, Z, T)
    intensity = np.array([30, 250, 80, 220, 0, 0, 0, 0], np.float32)
    image = intensity[labels] + np.random.default_rng(0).normal(0, 5, labels.shape)
    image[5:25, 5:25] = 300.0  # static bright object in a corner
    truth = (HEART_MM[0] / spacing[0] - 0.5, HEART_MM[1] / spacing[1] - 0.5)
    series = Series(name="cine", image=image, affine=np.diag([*spacing, 8.0, 1.0]), sequence=Sequence.CINE)
    return series, truth


def test_heuristic_centres_find_the_heart():
    series, truth = _beating()
    (x, y), source = find_heart_centre(series)  # no labels: temporal variance
    assert source == "temporal_variance"
    assert np.hypot(x - truth[0], y - truth[1]) * 1.5 < 30  # within 30 mm (RV moves too)
    single = dataclasses.replace(series, image=series.image[..., :1])
    (x, y), source = find_heart_centre(single)
    assert source == "bright_blob"
    assert np.hypot(x - truth[0], y - truth[1]) * 1.5 < 40


def test_pluggable_centre_finder():
    name = "test_fixed_corner"
    if name not in CENTRE_FINDERS:
        register_centre_finder(name)(lambda series: (10.0, 12.0))
    series, _ = _beating(frames=3)
    record = plan_preprocessing(series, PreprocessConfig(centre=name, size=16))
    assert record.centre == (10.0, 12.0) and record.centre_source == name
    with pytest.raises(ConfigError, match="unknown centre finder"):
        plan_preprocessing(series, PreprocessConfig(centre="nope"))


def test_preprocess_series_frames_and_labels():
    spacing = (1.8, 1.8)
    labels = heart_labels(spacing)
    series = series_for(labels, spacing, frames=3)
    prepared = preprocess_series(series, PreprocessConfig(size=128), frames=[0, 2])
    assert sorted(prepared.images) == [0, 2] and sorted(prepared.labels) == [0]
    assert prepared.images[0].shape == (3, 128, 128) and prepared.images[0].dtype == np.float32
    np.testing.assert_array_equal(invert_mask(prepared.labels[0], prepared.record), labels)


@pytest.mark.parametrize(
    "bad", [{"size": 4}, {"spacing_mm": 0.0}, {"percentiles": (50.0, 10.0)}, {"unknown_spacing_mm": -1.0}]
)
def test_config_validation(bad):
    with pytest.raises(ConfigError):
        PreprocessConfig(**bad).validate()


@pytest.mark.realdata
def test_real_acdc_heuristic_centre_near_the_heart(acdc_root):
    """Without labels (analysis time) the motion heuristic still lands on the heart."""
    from cmrfm.data.adapters.acdc import AcdcAdapter

    distances = []
    for folder in AcdcAdapter.list_studies(acdc_root)[::5]:
        series = AcdcAdapter.load_study(folder).series[0]
        truth, source = find_heart_centre(series)
        assert source == "labels"
        (x, y), source = find_heart_centre(dataclasses.replace(series, labels={}))
        assert source == "temporal_variance"
        distances.append(np.hypot((x - truth[0]) * series.spacing[0], (y - truth[1]) * series.spacing[1]))
    # the 128-pixel crop at 1.5 mm is 192 mm wide: a 50 mm error still keeps the heart inside
    assert np.median(distances) < 30 and max(distances) < 50, np.round(distances, 1)
