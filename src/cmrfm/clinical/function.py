"""Ventricular volumes, ejection fraction, mass and ED/ES by slice summation (Simpson's method).

Volumes use the *true* slice spacing (distance between slice centres along the stack normal, which
includes any gap), not the slice thickness: each slice's area stands for the slab up to the next.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import asdict, dataclass

import numpy as np

from cmrfm.constants import ML_PER_MM3, MYOCARDIAL_DENSITY_G_PER_ML, MYOCARDIAL_LABELS, Label


def slice_spacing_mm(positions: np.ndarray | None, fallback: float) -> float:
    """Median distance between adjacent slice positions ``(Z, 3)``; ``fallback`` for one slice."""
    if positions is None or len(positions) < 2:
        return float(fallback)
    steps = np.linalg.norm(np.diff(np.asarray(positions, float), axis=0), axis=1)
    return float(np.median(steps))


def label_volume_ml(
    mask: np.ndarray, labels: int | Sequence[int], pixel_area_mm2: float, slice_spacing: float
) -> float:
    """Volume (mL) of the voxels of ``mask`` (X, Y, Z) carrying any of ``labels``."""
    ids = [labels] if isinstance(labels, int | np.integer) else list(labels)
    voxels = int(np.isin(mask, ids).sum())
    return voxels * pixel_area_mm2 * slice_spacing * ML_PER_MM3


def volume_curve_ml(masks: np.ndarray, label: int, pixel_area_mm2: float, slice_spacing: float) -> np.ndarray:
    """Volume (mL) of ``label`` per frame for masks ``(X, Y, Z, T)`` -> ``(T,)``."""
    counts = (masks == label).reshape(-1, masks.shape[-1]).sum(axis=0)  # (T,)
    return counts * pixel_area_mm2 * slice_spacing * ML_PER_MM3


def detect_ed_es(lv_volumes: Sequence[float], rv_volumes: Sequence[float] | None = None) -> tuple[int, int]:
    """ED = frame of largest LV volume, ES = frame of smallest.

    With two frames (an ACDC-style ED/ES pair) and ``rv_volumes`` given, the frames are ordered by
    LV+RV volume instead: both ventricles are largest at ED, and the sum stays decisive when a failing
    LV barely changes volume. Ties keep the earliest frame, so a constant curve gives ``(0, 0)`` and
    callers can warn.
    """
    volumes = np.asarray(lv_volumes, float)
    if volumes.ndim != 1 or volumes.size == 0:
        raise ValueError("need a 1D, non-empty LV volume curve")
    if rv_volumes is not None and volumes.size == 2:
        volumes = volumes + np.asarray(rv_volumes, float)
    return int(np.argmax(volumes)), int(np.argmin(volumes))


def body_surface_area_m2(height_cm: float, weight_kg: float) -> float:
    """Mosteller body surface area: sqrt(height_cm × weight_kg / 3600)."""
    if height_cm <= 0 or weight_kg <= 0:
        raise ValueError("height and weight must be positive")
    return math.sqrt(height_cm * weight_kg / 3600.0)


@dataclass
class VentricularFunction:
    """Cardiac function from ED and ES segmentations (volumes mL, mass g, EF %)."""

    lv_edv_ml: float
    lv_esv_ml: float
    lv_sv_ml: float
    lv_ef_pct: float
    lv_mass_g: float
    rv_edv_ml: float
    rv_esv_ml: float
    rv_sv_ml: float
    rv_ef_pct: float

    def indexed(self, bsa_m2: float) -> dict[str, float]:
        """Volumes and mass divided by BSA (``*_ml_m2``, ``lv_mass_g_m2``)."""
        out = {}
        for key, value in asdict(self).items():
            if key.endswith("_ml"):
                out[key + "_m2"] = value / bsa_m2
            elif key == "lv_mass_g":
                out["lv_mass_g_m2"] = value / bsa_m2
        return out

    def as_dict(self) -> dict[str, float]:
        """Plain dict, rounded to 0.1."""
        return {k: round(float(v), 1) for k, v in asdict(self).items()}


def _ef(edv: float, esv: float) -> float:
    return float("nan") if edv <= 0 else 100.0 * (edv - esv) / edv


def ventricular_function(
    ed_mask: np.ndarray, es_mask: np.ndarray, pixel_area_mm2: float, slice_spacing: float
) -> VentricularFunction:
    """LV/RV EDV, ESV, SV, EF and LV mass (at ED) from internal-convention masks ``(X, Y, Z)``."""

    def vol(mask: np.ndarray, labels: int | Sequence[int]) -> float:
        return label_volume_ml(mask, labels, pixel_area_mm2, slice_spacing)

    lv_edv, lv_esv = vol(ed_mask, Label.LV), vol(es_mask, Label.LV)
    rv_edv, rv_esv = vol(ed_mask, Label.RV), vol(es_mask, Label.RV)
    mass = vol(ed_mask, MYOCARDIAL_LABELS) * MYOCARDIAL_DENSITY_G_PER_ML
    return VentricularFunction(
        lv_edv_ml=lv_edv,
        lv_esv_ml=lv_esv,
        lv_sv_ml=lv_edv - lv_esv,
        lv_ef_pct=_ef(lv_edv, lv_esv),
        lv_mass_g=mass,
        rv_edv_ml=rv_edv,
        rv_esv_ml=rv_esv,
        rv_sv_ml=rv_edv - rv_esv,
        rv_ef_pct=_ef(rv_edv, rv_esv),
    )
