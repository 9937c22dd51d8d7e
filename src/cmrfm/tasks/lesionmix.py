"""LesionMix: lesion-level augmentation of LGE slices (scar and MVO), labels kept consistent.

After Basaran et al., "LesionMix: A Lesion-Level Data Augmentation Method for Medical Image
Segmentation" (MICCAI DALI 2023), adapted to the myocardium: a lesion is a connected component of
infarct ∪ MVO (MVO travels with its infarct). Operations, each drawn at random:

* **inpaint** (remove): the lesion's pixels become myocardium, their intensities drawn from the
  remote (non-enhanced) myocardium of the slice and lightly smoothed;
* **move**: the lesion is rotated around the LV centre to another part of the wall;
* **rescale**: its angular extent and its transmural depth are scaled;
* **intensity**: its enhancement over remote myocardium is scaled;
* **populate**: a lesion of another training slice (the donor) is added to lesion-free myocardium,
  its enhancement re-expressed in this slice's remote-to-blood contrast.

Lesions are transferred in wall coordinates: angle around the LV centre and normalised depth from
endocardium (0) to epicardium (1), both measured per angle on the mask, so a subendocardial lesion
stays subendocardial and a transmural one transmural wherever it lands, and every transferred pixel
lies in the target myocardium. The myocardial region (MYO ∪ infarct ∪ MVO), blood pool and
background are never changed: only the split of the myocardium into healthy/infarct/MVO and the
image inside the myocardium are.

Masks here hold ``lge-seg`` class indices (0 background, 1 LV, 2 MYO, 3 infarct, 4 MVO).
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
from scipy import ndimage

from cmrfm.tasks.mixed import RandomlyChangedItems

#: ``lge-seg`` class indices.
BACKGROUND, LV, MYO, INFARCT, MVO = 0, 1, 2, 3, 4
MYOCARDIUM = (MYO, INFARCT, MVO)
LESION = (INFARCT, MVO)
#: Angular bins for the endocardial/epicardial radius profiles.
ANGLE_BINS = 90
#: Smoothing (pixels) of inpainted intensities.
INPAINT_SMOOTH_PX = 0.7
#: Minimum lesion size (pixels) considered a lesion component.
MIN_LESION_PX = 3


@dataclass
class LesionMixConfig:
    """LesionMix ranges (probabilities per lesion or per slice).

    Attributes:
        move_prob: Probability that a lesion is moved (else it stays, possibly rescaled).
        rotate_deg: Largest rotation around the LV centre when moving.
        angular_scale: Range of the lesion's angular-extent scale.
        depth_scale: Range of its transmural-depth scale.
        intensity: Range of the scale of its enhancement over remote myocardium.
        remove_prob: Probability that a lesion is removed (inpainted with remote myocardium).
        populate_prob: Probability of adding a donor lesion to the slice.
        max_populate: Most donor lesions added to one slice.
    """

    move_prob: float = 0.7
    rotate_deg: float = 180.0
    angular_scale: tuple[float, float] = (0.7, 1.4)
    depth_scale: tuple[float, float] = (0.7, 1.3)
    intensity: tuple[float, float] = (0.8, 1.2)
    remove_prob: float = 0.15
    populate_prob: float = 0.5
    max_populate: int = 2


@dataclass
class WallGeometry:
    """Polar description of the myocardium of one slice.

    Attributes:
        centre: LV centre ``(row, col)``.
        endo: Endocardial radius per angular bin ``(ANGLE_BINS,)`` (pixels).
        epi: Epicardial radius per angular bin.
        covered: Bins that contain myocardium.
    """

    centre: tuple[float, float]
    endo: np.ndarray
    epi: np.ndarray
    covered: np.ndarray

    def radii(self, angle: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """Endo radius, epi radius and coverage at angles (radians), nearest bin."""
        b = _bin(angle)
        return self.endo[b], self.epi[b], self.covered[b]


def _bin(angle: np.ndarray) -> np.ndarray:
    return (np.floor(np.mod(angle, 2 * math.pi) / (2 * math.pi) * ANGLE_BINS).astype(int)) % ANGLE_BINS


def _polar(shape: tuple[int, int], centre: tuple[float, float]) -> tuple[np.ndarray, np.ndarray]:
    rows, cols = np.mgrid[0 : shape[0], 0 : shape[1]].astype(np.float64)
    return np.hypot(rows - centre[0], cols - centre[1]), np.arctan2(rows - centre[0], cols - centre[1])


def wall_geometry(mask: np.ndarray) -> WallGeometry | None:
    """Endo/epi radius profiles of the myocardium around the LV centre; None without myocardium."""
    myo = np.isin(mask, MYOCARDIUM)
    if not myo.any():
        return None
    cavity = mask == LV
    centre = ndimage.center_of_mass(cavity if cavity.any() else myo)
    radius, angle = _polar(mask.shape, centre)
    bins = _bin(angle[myo])
    r = radius[myo]
    endo = np.full(ANGLE_BINS, np.inf)
    epi = np.full(ANGLE_BINS, -np.inf)
    np.minimum.at(endo, bins, r - 0.5)
    np.maximum.at(epi, bins, r + 0.5)
    covered = np.isfinite(endo)
    endo[~covered], epi[~covered] = 0.0, 0.0
    return WallGeometry((float(centre[0]), float(centre[1])), endo, epi, covered)


def wall_coordinates(mask: np.ndarray, geometry: WallGeometry) -> tuple[np.ndarray, np.ndarray]:
    """Angle (radians) and normalised depth (0 endo .. 1 epi) of every pixel ``(H, W)``."""
    radius, angle = _polar(mask.shape, geometry.centre)
    endo, epi, _ = geometry.radii(angle)
    depth = (radius - endo) / np.maximum(epi - endo, 1e-6)
    return angle, depth


def lesion_components(mask: np.ndarray) -> list[np.ndarray]:
    """Boolean maps of each lesion (connected infarct ∪ MVO component of at least 3 pixels)."""
    labelled, n = ndimage.label(np.isin(mask, LESION), structure=np.ones((3, 3)))
    return [labelled == i for i in range(1, n + 1) if np.count_nonzero(labelled == i) >= MIN_LESION_PX]


def remote_stats(image: np.ndarray, mask: np.ndarray) -> tuple[float, float, float]:
    """Median and spread of remote (healthy) myocardium and median blood-pool intensity."""
    remote = image[mask == MYO]
    if remote.size == 0:
        remote = image[np.isin(mask, MYOCARDIUM)]
    blood = image[mask == LV]
    median = float(np.median(remote)) if remote.size else float(np.median(image))
    spread = float(np.std(remote)) if remote.size > 1 else 0.0
    blood_level = float(np.median(blood)) if blood.size else median + 1.0
    return median, spread, blood_level


def inpaint(
    image: np.ndarray, mask: np.ndarray, region: np.ndarray, rng: np.random.Generator
) -> tuple[np.ndarray, np.ndarray]:
    """Removes the lesion pixels in ``region``: labelled MYO, intensities like remote myocardium.

    Each pixel draws a value of the slice's healthy myocardium (Gaussian around its median when
    there is none), then the fill is blended half-and-half with a light smoothing that also mixes
    in the surrounding pixels, so the patch has remote texture without a hard edge.
    """
    image, mask = image.copy(), mask.copy()
    region = region & np.isin(mask, MYOCARDIUM)
    count = int(region.sum())
    if count == 0:
        return image, mask
    remote = image[mask == MYO]
    if remote.size:
        fill = rng.choice(remote, size=count)
    else:
        median, spread, _ = remote_stats(image, mask)
        fill = median + spread * rng.standard_normal(count)
    patch = image.copy()
    patch[region] = fill
    smooth = ndimage.gaussian_filter(patch, INPAINT_SMOOTH_PX)
    image[region] = 0.5 * patch[region] + 0.5 * smooth[region]
    mask[region] = MYO
    return image, mask


def transfer(
    source_image: np.ndarray,
    source_mask: np.ndarray,
    lesion: np.ndarray,
    target_image: np.ndarray,
    target_mask: np.ndarray,
    rotation: float = 0.0,
    angular_scale: float = 1.0,
    depth_scale: float = 1.0,
    intensity: float = 1.0,
) -> tuple[np.ndarray, np.ndarray]:
    """Pastes one source lesion into the target myocardium in wall coordinates.

    Every target myocardial pixel at (angle, depth) looks up the source at
    ``(a0 + (angle - rotation - a0) / angular_scale, depth / depth_scale)`` (``a0`` the lesion's
    central angle); where that is inside ``lesion`` the pixel takes the source class (infarct or
    MVO) and the source enhancement over remote myocardium, re-expressed in the target's
    remote-to-blood contrast and scaled by ``intensity``.

    Args:
        source_image: Source ``(H, W)`` image.
        source_mask: Source class mask.
        lesion: Boolean map of the source lesion.
        target_image: Target image (may be the source after inpainting).
        target_mask: Target class mask.
        rotation: Rotation (radians) around the LV centre.
        angular_scale: Scale of the lesion's angular extent.
        depth_scale: Scale of its transmural depth.
        intensity: Scale of its enhancement.

    Returns:
        New target image and mask (unchanged when either slice has no myocardium).
    """
    src_geo, dst_geo = wall_geometry(source_mask), wall_geometry(target_mask)
    if src_geo is None or dst_geo is None or not lesion.any():
        return target_image, target_mask
    src_angle, _ = wall_coordinates(source_mask, src_geo)
    centre_angle = float(np.angle(np.exp(1j * src_angle[lesion]).mean()))
    dst_angle, dst_depth = wall_coordinates(target_mask, dst_geo)
    myo = np.isin(target_mask, MYOCARDIUM)
    # source wall coordinates of every target pixel
    rel = np.angle(np.exp(1j * (dst_angle - rotation - centre_angle)))  # (-pi, pi]
    s_angle = centre_angle + rel / angular_scale
    s_depth = dst_depth / depth_scale
    endo, epi, covered = src_geo.radii(s_angle)
    s_radius = endo + s_depth * (epi - endo)
    rows = src_geo.centre[0] + s_radius * np.sin(s_angle)
    cols = src_geo.centre[1] + s_radius * np.cos(s_angle)
    ri, ci = np.rint(rows).astype(int), np.rint(cols).astype(int)
    inside = (ri >= 0) & (ri < lesion.shape[0]) & (ci >= 0) & (ci < lesion.shape[1]) & covered
    ri, ci = np.clip(ri, 0, lesion.shape[0] - 1), np.clip(ci, 0, lesion.shape[1] - 1)
    hit = myo & inside & (s_depth >= 0) & (s_depth <= 1) & lesion[ri, ci]
    if not hit.any():
        return target_image, target_mask
    s_remote, _, s_blood = remote_stats(source_image, source_mask)
    t_remote, _, t_blood = remote_stats(target_image, target_mask)
    s_contrast = s_blood - s_remote if abs(s_blood - s_remote) > 1e-6 else 1.0
    t_contrast = t_blood - t_remote if abs(t_blood - t_remote) > 1e-6 else 1.0
    values = ndimage.map_coordinates(source_image.astype(np.float32), [rows, cols], order=1, mode="nearest")
    enhanced = t_remote + (values - s_remote) / s_contrast * t_contrast * intensity
    image, mask = target_image.copy(), target_mask.copy()
    image[hit] = enhanced[hit]
    mask[hit] = source_mask[ri, ci][hit]
    return image, mask


def _uniform(rng: np.random.Generator, bounds: tuple[float, float]) -> float:
    return float(rng.uniform(bounds[0], bounds[1]))


def lesion_mix(
    image: np.ndarray,
    mask: np.ndarray,
    rng: np.random.Generator,
    donors: Sequence[tuple[np.ndarray, np.ndarray]] = (),
    config: LesionMixConfig | None = None,
) -> tuple[np.ndarray, np.ndarray]:
    """One random LesionMix of a slice: remove, move/rescale/re-intensify its lesions, populate.

    Args:
        image: ``(H, W)`` image.
        mask: ``(H, W)`` ``lge-seg`` class indices.
        rng: Random generator.
        donors: ``(image, mask)`` slices with lesions to populate from (may include this one).
        config: Ranges (defaults when None).

    Returns:
        The augmented image (float32) and mask (same dtype as ``mask``).
    """
    cfg = config or LesionMixConfig()
    image = np.asarray(image, np.float32)
    mask = np.asarray(mask)
    if wall_geometry(mask) is None:
        return image.copy(), mask.copy()
    original_image, original_mask = image, mask
    lesions = lesion_components(mask)
    out_image, out_mask = image, mask
    if lesions:
        out_image, out_mask = inpaint(image, mask, np.any(lesions, axis=0), rng)
    for lesion in lesions:
        if rng.random() < cfg.remove_prob:
            continue
        moved = rng.random() < cfg.move_prob
        rotation = math.radians(_uniform(rng, (-cfg.rotate_deg, cfg.rotate_deg))) if moved else 0.0
        out_image, out_mask = transfer(
            original_image,
            original_mask,
            lesion,
            out_image,
            out_mask,
            rotation,
            _uniform(rng, cfg.angular_scale),
            _uniform(rng, cfg.depth_scale),
            _uniform(rng, cfg.intensity),
        )
    if donors and rng.random() < cfg.populate_prob:
        for _ in range(int(rng.integers(1, cfg.max_populate + 1))):
            d_image, d_mask = donors[int(rng.integers(len(donors)))]
            d_image, d_mask = np.asarray(d_image, np.float32), np.asarray(d_mask)
            d_lesions = lesion_components(d_mask)
            if not d_lesions:
                continue
            lesion = d_lesions[int(rng.integers(len(d_lesions)))]
            out_image, out_mask = transfer(
                d_image,
                d_mask,
                lesion,
                out_image,
                out_mask,
                math.radians(_uniform(rng, (-180.0, 180.0))),
                _uniform(rng, cfg.angular_scale),
                _uniform(rng, cfg.depth_scale),
                _uniform(rng, cfg.intensity),
            )
    return out_image.astype(np.float32), out_mask.astype(mask.dtype)


class LesionMixItems(RandomlyChangedItems):
    """Segmentation items with LesionMix applied with probability ``prob`` on access (training only).

    Donors are the items whose mask holds a lesion (found once, at construction). Randomness comes
    from torch's global generator (saved in fine-tuning checkpoints), so runs resume exactly.

    Args:
        items: Segmentation items (``image`` ``(H, W)``, ``mask`` class indices).
        prob: Probability of augmenting an accessed item.
        config: LesionMix ranges.
    """

    def __init__(
        self, items: Sequence[dict[str, Any]], prob: float, config: LesionMixConfig | None = None
    ) -> None:
        super().__init__(items, prob)
        self.config = config or LesionMixConfig()
        self.donors = [i for i in range(len(items)) if np.isin(np.asarray(items[i]["mask"]), LESION).any()]

    def change(self, item: dict[str, Any], rng: np.random.Generator) -> dict[str, Any]:
        """``item`` with its lesions moved, rescaled, re-intensified, removed or populated."""
        donors = []
        if self.donors:
            picks = rng.choice(
                self.donors, size=min(self.config.max_populate, len(self.donors)), replace=False
            )
            donors = [(self.items[int(i)]["image"], self.items[int(i)]["mask"]) for i in picks]
        item["image"], item["mask"] = lesion_mix(item["image"], item["mask"], rng, donors, self.config)
        return item
