"""LesionMix: labels stay consistent (scar only in myocardium) and lesions change as asked."""

import math

import numpy as np
import pytest
import torch

from cmrfm.engine.finetune import FinetuneConfig, build_task, finetune
from cmrfm.tasks.lesionmix import (
    INFARCT,
    LESION,
    LV,
    MVO,
    MYO,
    MYOCARDIUM,
    LesionMixConfig,
    LesionMixItems,
    inpaint,
    lesion_components,
    lesion_mix,
    transfer,
    wall_coordinates,
    wall_geometry,
)

SIZE, CENTRE, R_ENDO, R_EPI = 64, (32.0, 32.0), 10.0, 17.0
REMOTE, BLOOD, SCAR, NOREFLOW = 0.1, 0.6, 1.0, 0.15


def ring_slice(angle_deg=0.0, width_deg=50.0, depth=0.6, mvo=True, lesion=True, seed=0):
    """A ring myocardium with one subendocardial lesion (and an MVO core) at ``angle_deg``."""
    rng = np.random.default_rng(seed)
    rows, cols = np.mgrid[0:SIZE, 0:SIZE].astype(float)
    r = np.hypot(rows - CENTRE[0], cols - CENTRE[1])
    a = np.arctan2(rows - CENTRE[0], cols - CENTRE[1])
    mask = np.zeros((SIZE, SIZE), np.int64)
    mask[r < R_ENDO] = LV
    ring = (r >= R_ENDO) & (r < R_EPI)
    mask[ring] = MYO
    image = np.full((SIZE, SIZE), 0.05, np.float32)
    image[mask == LV] = BLOOD
    image[ring] = REMOTE
    if lesion:
        off = np.abs(np.angle(np.exp(1j * (a - math.radians(angle_deg)))))
        d = (r - R_ENDO) / (R_EPI - R_ENDO)
        scar = ring & (off < math.radians(width_deg / 2)) & (d < depth)
        mask[scar] = INFARCT
        image[scar] = SCAR
        if mvo:
            core = scar & (off < math.radians(width_deg / 6)) & (d < depth / 3)
            mask[core] = MVO
            image[core] = NOREFLOW
    image += rng.normal(0, 0.01, image.shape).astype(np.float32)
    return image, mask


def lesion_angle(mask):
    geo = wall_geometry(mask)
    angle, _ = wall_coordinates(mask, geo)
    sel = np.isin(mask, LESION)
    return math.degrees(float(np.angle(np.exp(1j * angle[sel]).mean())))


def assert_consistent(mask_in, mask_out, image_in, image_out):
    myo_in, myo_out = np.isin(mask_in, MYOCARDIUM), np.isin(mask_out, MYOCARDIUM)
    assert np.array_equal(myo_in, myo_out), "the myocardial region changed"
    assert np.array_equal(mask_in[~myo_in], mask_out[~myo_out]), "blood pool or background changed"
    assert np.array_equal(image_in[~myo_in], image_out[~myo_out]), "image changed outside the myocardium"
    assert not np.isin(mask_out[~myo_in], LESION).any(), "scar outside the myocardium"


def test_random_mixes_keep_labels_consistent():
    image, mask = ring_slice()
    donor = ring_slice(angle_deg=120, width_deg=80, depth=1.0, seed=3)
    empty = ring_slice(lesion=False)
    for seed in range(12):
        rng = np.random.default_rng(seed)
        for img, msk in ((image, mask), empty):
            out_image, out_mask = lesion_mix(img, msk, rng, donors=[donor, (image, mask)])
            assert out_image.shape == img.shape and out_mask.dtype == msk.dtype
            assert_consistent(msk, out_mask, img, out_image)
            # MVO never floats alone: each MVO pixel belongs to a lesion that also holds infarct
            for comp in lesion_components(out_mask):
                if (out_mask[comp] == MVO).any():
                    assert (out_mask[comp] == INFARCT).any()


def test_remove_inpaints_with_remote_myocardium():
    image, mask = ring_slice()
    region = np.isin(mask, LESION)
    out_image, out_mask = inpaint(image, mask, region, np.random.default_rng(0))
    assert not np.isin(out_mask, LESION).any() and (out_mask[region] == MYO).all()
    assert abs(float(out_image[region].mean()) - REMOTE) < 0.03
    cfg = LesionMixConfig(remove_prob=1.0, populate_prob=0.0)
    out_image, out_mask = lesion_mix(image, mask, np.random.default_rng(1), config=cfg)
    assert lesion_components(out_mask) == [] and abs(float(out_image[region].mean()) - REMOTE) < 0.03


def test_move_rotates_the_lesion_along_the_wall():
    image, mask = ring_slice(angle_deg=0.0)
    lesion = np.isin(mask, LESION)
    base_image, base_mask = inpaint(image, mask, lesion, np.random.default_rng(0))
    out_image, out_mask = transfer(image, mask, lesion, base_image, base_mask, rotation=math.pi / 2)
    assert_consistent(mask, out_mask, image, out_image)
    assert abs(lesion_angle(out_mask) - 90.0) < 8.0
    size_in, size_out = lesion.sum(), np.isin(out_mask, LESION).sum()
    assert 0.8 < size_out / size_in < 1.25
    assert (out_mask == MVO).sum() > 0 and len(lesion_components(out_mask)) == 1
    assert float(out_image[np.isin(out_mask, LESION) & (out_mask == INFARCT)].mean()) > 0.8


@pytest.mark.parametrize(("angular", "depth", "low", "high"), [(1.6, 1.0, 1.35, 1.85), (1.0, 0.5, 0.4, 0.7)])
def test_rescale_changes_lesion_size_as_asked(angular, depth, low, high):
    image, mask = ring_slice(width_deg=50.0, depth=0.8)
    lesion = np.isin(mask, LESION)
    base_image, base_mask = inpaint(image, mask, lesion, np.random.default_rng(0))
    _, out_mask = transfer(
        image, mask, lesion, base_image, base_mask, angular_scale=angular, depth_scale=depth
    )
    ratio = np.isin(out_mask, LESION).sum() / lesion.sum()
    assert low < ratio < high


def test_intensity_scales_enhancement():
    image, mask = ring_slice(mvo=False)
    lesion = np.isin(mask, LESION)
    base_image, base_mask = inpaint(image, mask, lesion, np.random.default_rng(0))
    out_image, out_mask = transfer(image, mask, lesion, base_image, base_mask, intensity=0.5)
    enhancement = float(out_image[out_mask == INFARCT].mean()) - REMOTE
    assert abs(enhancement - 0.5 * (SCAR - REMOTE)) < 0.08


def test_populate_adds_lesions_to_lesion_free_myocardium():
    target_image, target_mask = ring_slice(lesion=False)
    donor = ring_slice(angle_deg=200, width_deg=70, depth=1.0, seed=5)
    cfg = LesionMixConfig(populate_prob=1.0, max_populate=1)
    out_image, out_mask = lesion_mix(target_image, target_mask, np.random.default_rng(2), [donor], cfg)
    assert len(lesion_components(target_mask)) == 0 and len(lesion_components(out_mask)) == 1
    assert_consistent(target_mask, out_mask, target_image, out_image)
    assert float(out_image[out_mask == INFARCT].mean()) > REMOTE + 0.3


def test_populate_into_a_thicker_wall_stays_in_myocardium():
    """A transmural donor lesion placed into a slice with a different wall never leaves it."""
    donor = ring_slice(width_deg=120, depth=1.0, seed=1)
    rows, cols = np.mgrid[0:SIZE, 0:SIZE].astype(float)
    r = np.hypot(rows - 30, cols - 35)
    mask = np.zeros((SIZE, SIZE), np.int64)
    mask[(r >= 7) & (r < 20)] = MYO
    mask[r < 7] = LV
    image = np.where(mask == LV, 0.5, 0.08).astype(np.float32)
    for rotation in np.linspace(-math.pi, math.pi, 7):
        out_image, out_mask = transfer(*donor, np.isin(donor[1], LESION), image, mask, rotation=rotation)
        assert_consistent(mask, out_mask, image, out_image)
        assert np.isin(out_mask, LESION).sum() > 0


def test_lesionmix_items_and_lge_seg_option(tmp_path):
    task = build_task("lge-seg", {"lesionmix": 1.0})
    data = task.synthetic_data()
    train = data.make_dataset(data.subjects[:2], True)
    assert isinstance(train.items, LesionMixItems) and train.items.donors
    torch.manual_seed(0)
    for i in range(len(train.items)):
        raw, mixed = train.items.items[i], train.items[i]
        assert_consistent(np.asarray(raw["mask"]), mixed["mask"], np.asarray(raw["image"]), mixed["image"])
    assert not isinstance(data.make_dataset(data.subjects[:2], False).items, LesionMixItems)
    cfg = FinetuneConfig(
        task="lge-seg",
        synthetic=True,
        image_size=32,
        backbone={"embed_dim": 32, "depth": 2, "num_heads": 2},
        steps=2,
        batch_size=2,
        folds=2,
        out=str(tmp_path / "run"),
        amp="off",
        task_options={"lesionmix": 1.0},
    )
    assert "dice_infarct" in finetune(cfg, progress=False).eval.metrics
