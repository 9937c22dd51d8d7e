"""Study-level shape and function features from ED/ES segmentations (for disease classification).

The same function runs on manual labels (training targets' inputs) and on predicted masks (study
analysis), so a classifier sees the same kind of numbers in both places. Values are scaled to
roughly unit range (log volumes, fractions) so a small network can use them directly.
"""

from __future__ import annotations

import numpy as np
from scipy import ndimage

from cmrfm.constants import ML_PER_MM3, MYOCARDIAL_DENSITY_G_PER_ML, Label

FEATURE_NAMES = (
    "log_lv_edv",
    "log_lv_esv",
    "lv_ef",
    "log_rv_edv",
    "log_rv_esv",
    "rv_ef",
    "log_lv_mass",
    "mass_to_edv",
    "rv_to_lv_edv",
    "max_wall_cm",
    "mean_wall_cm",
    "wall_thickness_cv",
)


def _volume(mask: np.ndarray, label: int, voxel_mm3: float) -> float:
    return float((mask == label).sum()) * voxel_mm3 * ML_PER_MM3


def wall_thickness_mm(mask: np.ndarray, pixel_mm: float) -> tuple[float, float, float]:
    """Maximum, mean and coefficient of variation of myocardial thickness over slices ``(H, W, Z)``.

    Thickness per slice is twice the largest inscribed distance of the myocardium (maximum) and
    area / mean of endo- and epicardial perimeters (mean); the CV is over slices' local maxima
    along the ring, sensitive to regional thinning (infarct) and asymmetric hypertrophy.
    """
    maxima, means, locals_ = [], [], []
    for z in range(mask.shape[-1]):
        myo = mask[..., z] == Label.MYO
        if myo.sum() < 10:
            continue
        dist = ndimage.distance_transform_edt(myo) * pixel_mm
        maxima.append(2 * dist.max())
        lv = mask[..., z] == Label.LV
        endo = lv.sum() and (lv ^ ndimage.binary_erosion(lv)).sum()
        epi_region = lv | myo
        epi = (epi_region ^ ndimage.binary_erosion(epi_region)).sum()
        perimeter = (float(endo) + float(epi)) / 2 * pixel_mm
        if perimeter > 0:
            means.append(myo.sum() * pixel_mm**2 / perimeter)
        skeleton_values = dist[(dist > 0) & (dist >= ndimage.maximum_filter(dist, size=3))]
        locals_.extend((2 * skeleton_values).tolist())
    if not maxima:
        return 0.0, 0.0, 0.0
    local = np.asarray(locals_) if locals_ else np.asarray(maxima)
    cv = float(local.std() / local.mean()) if local.mean() > 0 else 0.0
    return float(np.max(maxima)), float(np.mean(means)) if means else 0.0, cv


def disease_features(ed: np.ndarray, es: np.ndarray, pixel_mm: float, slice_mm: float) -> np.ndarray:
    """The :data:`FEATURE_NAMES` vector from ED and ES masks ``(H, W, Z)`` in internal labels.

    Args:
        ed: End-diastolic mask.
        es: End-systolic mask.
        pixel_mm: In-plane pixel size (square pixels).
        slice_mm: Distance between slice centres.
    """
    voxel = pixel_mm * pixel_mm * slice_mm
    lv_edv, lv_esv = _volume(ed, Label.LV, voxel), _volume(es, Label.LV, voxel)
    rv_edv, rv_esv = _volume(ed, Label.RV, voxel), _volume(es, Label.RV, voxel)
    mass = _volume(ed, Label.MYO, voxel) * MYOCARDIAL_DENSITY_G_PER_ML
    max_wall, mean_wall, cv = wall_thickness_mm(ed, pixel_mm)
    features = [
        np.log1p(lv_edv),
        np.log1p(lv_esv),
        (lv_edv - lv_esv) / lv_edv if lv_edv > 0 else 0.0,
        np.log1p(rv_edv),
        np.log1p(rv_esv),
        (rv_edv - rv_esv) / rv_edv if rv_edv > 0 else 0.0,
        np.log1p(mass),
        mass / lv_edv if lv_edv > 0 else 0.0,
        rv_edv / lv_edv if lv_edv > 0 else 0.0,
        max_wall / 10.0,
        mean_wall / 10.0,
        cv,
    ]
    return np.asarray(features, np.float32)
