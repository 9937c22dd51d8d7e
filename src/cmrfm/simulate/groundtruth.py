"""Ground truth from the phantom: landmarks, volumes, EF, mass (analytic and from masks), wall thickness.

Landmarks are computed from the continuous model, then projected into each image:

* SAX: RV insertion points, where the RV cavity meets the LV epicardium (anterior and inferior).
* LAX (2CH/3CH/4CH): the two mitral-valve hinge points on the mitral plane and the epicardial LV apex.
"""

from __future__ import annotations

import math

import numpy as np

from cmrfm.clinical.function import label_volume_ml
from cmrfm.constants import MYOCARDIAL_DENSITY_G_PER_ML, MYOCARDIAL_LABELS, Label
from cmrfm.simulate.anatomy import FINE_STEP_MM, HeartCoords, Phantom
from cmrfm.simulate.motion import contraction
from cmrfm.simulate.planes import Plane
from cmrfm.simulate.tissue import Tissue

#: Angular step (deg) when searching the RV insertion points around the epicardium.
INSERTION_STEP_DEG = 0.5
#: Landmark names per view family (fixed order: generator items use these indices).
SAX_LANDMARKS = ("rv_insertion_anterior", "rv_insertion_inferior")
LAX_LANDMARKS = ("mitral_hinge_septal", "mitral_hinge_lateral", "lv_apex")
#: Grid step (mm) of the RV volume integration (grid noise ~1 % at 0.75 mm, ~2 % at 1 mm).
RV_TRUTH_STEP_MM = 0.75
#: Rays for wall-thickness measurement on a mask.
THICKNESS_RAYS = 72


def world_to_pixel(plane: Plane, pts: np.ndarray) -> np.ndarray:
    """Fractional pixel coordinates ``(N, 2)`` (i, j) of world points on ``plane``."""
    rel = np.atleast_2d(pts) - plane.origin
    return np.stack([rel @ plane.u / plane.spacing[0], rel @ plane.v / plane.spacing[1]], -1)


def _entry(plane: Plane, world: np.ndarray) -> dict[str, list[float]]:
    pix = world_to_pixel(plane, world[None])[0]
    return {"pixel": [round(float(v), 3) for v in pix], "world": [round(float(v), 3) for v in world]}


def sax_landmarks(phantom: Phantom, plane: Plane, t: float, shift: np.ndarray, probe_mm: float = 2.0) -> dict:
    """RV insertion points on a SAX plane at cycle fraction ``t`` (empty when the RV is absent).

    The insertion is the last angle around the epicardium where the RV cavity lies just outside it
    (``probe_mm`` beyond the epicardium), at each end of the RV crescent.
    """
    heart = phantom.heart
    st = heart.state(t)
    z = float(phantom.to_heart(plane.centre[None], shift)[0, 2])
    phis = np.arange(0.0, 360.0, INSERTION_STEP_DEG)
    r_epi = heart.epi_radius(st, z, phis)
    if not np.any(r_epi > 0):
        return {}
    rad = np.radians(phis)
    probe = np.stack(
        [(r_epi + probe_mm) * np.cos(rad), (r_epi + probe_mm) * np.sin(rad), np.full_like(rad, z)], -1
    )
    is_rv = heart.classify(HeartCoords.from_points(probe), st) == Tissue.RV_BLOOD
    if not is_rv.any() or is_rv.all():
        return {}
    start = int(np.flatnonzero(~is_rv)[0])
    rolled = np.roll(is_rv, -start)  # begins outside the RV
    padded = np.concatenate([[False], rolled, [False]]).astype(np.int8)
    edges = np.diff(padded)
    starts, ends = np.flatnonzero(edges == 1), np.flatnonzero(edges == -1) - 1
    longest = int(np.argmax(ends - starts))
    a_idx = (starts[longest] + start) % len(phis)
    b_idx = (ends[longest] + start) % len(phis)
    out = {}
    points = []
    for idx in (a_idx, b_idx):
        p_h = np.array([r_epi[idx] * math.cos(rad[idx]), r_epi[idx] * math.sin(rad[idx]), z])
        points.append((math.sin(rad[idx]), phantom.to_world(p_h[None], shift)[0]))
    points.sort(key=lambda item: -item[0])  # larger sin(phi) = more anterior
    for name, (_, world) in zip(SAX_LANDMARKS, points, strict=True):
        out[name] = _entry(plane, world)
    return out


def lax_landmarks(phantom: Phantom, plane: Plane, t: float, shift: np.ndarray) -> dict:
    """Mitral hinge points (on the mitral plane, at the endocardium) and epicardial LV apex."""
    heart = phantom.heart
    st = heart.state(t)
    angle = float(plane.angle_deg or 0.0)
    out = {}
    for name, phi in zip(LAX_LANDMARKS[:2], (angle, angle + 180.0), strict=True):
        r = float(heart.endo_radius(st, st.z_base, np.array([phi]))[0])
        p_h = np.array([r * math.cos(math.radians(phi)), r * math.sin(math.radians(phi)), st.z_base])
        out[name] = _entry(plane, phantom.to_world(p_h[None], shift)[0])
    apex_h = np.array([0.0, 0.0, st.zc - st.Lo])
    out[LAX_LANDMARKS[2]] = _entry(plane, phantom.to_world(apex_h[None], shift)[0])
    return out


def volumes_from_labels(labels: np.ndarray, spacing: tuple[float, float, float]) -> dict[str, float]:
    """LV, RV, myocardial volume (mL) and LV mass (g) of one 3D label volume (disc summation)."""
    area, depth = float(spacing[0]) * float(spacing[1]), float(spacing[2])
    lv = label_volume_ml(labels, Label.LV, area, depth)
    rv = label_volume_ml(labels, Label.RV, area, depth)
    myo = label_volume_ml(labels, MYOCARDIAL_LABELS, area, depth)
    return {"lv_ml": lv, "rv_ml": rv, "myo_ml": myo, "lv_mass_g": myo * MYOCARDIAL_DENSITY_G_PER_ML}


def ejection_fraction(edv: float, esv: float) -> float:
    """EF (fraction) from end-diastolic and end-systolic volumes."""
    return (edv - esv) / edv if edv > 0 else float("nan")


def analytic_truth(phantom: Phantom, es_t: float) -> dict[str, float]:
    """Subject-level truth from the continuous model (LV exact; RV and scar by grid integration).

    Args:
        phantom: The subject.
        es_t: Cycle fraction of the end-systolic frame.
    """
    heart = phantom.heart
    lv_ed, lv_es = heart.lv_volume_ml(0.0), heart.lv_volume_ml(es_t)
    rv_ed = heart.rv_volume_ml(0.0, RV_TRUTH_STEP_MM)
    rv_es = heart.rv_volume_ml(es_t, RV_TRUTH_STEP_MM)
    myo = heart.myo_volume_ml()
    truth = {
        "lv_edv_ml": lv_ed,
        "lv_esv_ml": lv_es,
        "lv_ef": ejection_fraction(lv_ed, lv_es),
        "rv_edv_ml": rv_ed,
        "rv_esv_ml": rv_es,
        "rv_ef": ejection_fraction(rv_ed, rv_es),
        "lv_myo_ml": myo,
        "lv_mass_g": myo * MYOCARDIAL_DENSITY_G_PER_ML,
        "es_contraction": float(contraction(es_t, heart.es_fraction)),
    }
    if heart.p.territory:
        scar = heart.numeric_volume_ml(0.0, (Tissue.SCAR, Tissue.MVO), FINE_STEP_MM)
        mvo = heart.numeric_volume_ml(0.0, (Tissue.MVO,), FINE_STEP_MM)
        truth.update({"scar_ml": scar, "mvo_ml": mvo, "scar_fraction": scar / myo})
    return {k: round(float(v), 4) for k, v in truth.items()}


def wall_thickness_mm(
    mask: np.ndarray, spacing: tuple[float, float], n_rays: int = THICKNESS_RAYS
) -> np.ndarray:
    """Myocardial thickness (mm) along rays from the LV-cavity centroid of a 2D SAX mask.

    Returns:
        ``(n_rays,)`` thickness per ray (0 where a ray crosses no myocardium); empty when no LV.
    """
    lv = np.argwhere(mask == Label.LV)
    if len(lv) == 0:
        return np.zeros(0)
    ci, cj = lv.mean(0)
    myo = np.isin(mask, MYOCARDIAL_LABELS)
    step = 0.25
    radii = np.arange(0, max(mask.shape), step)
    angles = np.linspace(0, 2 * np.pi, n_rays, endpoint=False)
    ii = np.rint(ci + radii[None, :] * np.cos(angles)[:, None]).astype(int)  # (R, S)
    jj = np.rint(cj + radii[None, :] * np.sin(angles)[:, None]).astype(int)
    inside = (ii >= 0) & (ii < mask.shape[0]) & (jj >= 0) & (jj < mask.shape[1])
    hit = np.zeros_like(inside)
    hit[inside] = myo[ii[inside], jj[inside]]
    pixel_mm = np.sqrt((spacing[0] * np.cos(angles)) ** 2 + (spacing[1] * np.sin(angles)) ** 2)
    return hit.sum(1) * step * pixel_mm
