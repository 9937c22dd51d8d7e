"""Geometry read off short-axis masks: RV insertion points and the septal direction.

The RV insertion points are the two ends of the arc along which the RV blood pool touches the LV
myocardium. They orient the AHA segment model (the septum lies between them) and are the
``landmarks`` task's SAX targets when derived from manual labels.
"""

from __future__ import annotations

import numpy as np
from scipy import ndimage

from cmrfm.constants import Label

#: Smallest contact arc (degrees) accepted as a real RV-LV junction.
MIN_CONTACT_ARC_DEG = 15.0
#: Contact pixels averaged at each end of the arc (robust to single-pixel noise).
END_PIXELS = 3


def rv_insertion_points(mask: np.ndarray) -> np.ndarray | None:
    """The two RV insertion points of a SAX slice, or ``None`` where there is no clear junction.

    Args:
        mask: ``(H, W)`` internal labels (rows, columns).

    Returns:
        ``(2, 2)`` points as (x = column, y = row) in pixels, ordered counter-clockwise in image
        coordinates around the LV centre starting from the end of the arc after the largest gap.
    """
    myo = mask == Label.MYO
    rv = mask == Label.RV
    lv = mask == Label.LV
    if not myo.any() or not rv.any():
        return None
    contact = myo & ndimage.binary_dilation(rv, iterations=2)
    if contact.sum() < 2:
        return None
    centre_mask = lv if lv.any() else myo
    cy, cx = ndimage.center_of_mass(centre_mask)
    ys, xs = np.nonzero(contact)
    angles = np.arctan2(ys - cy, xs - cx)  # (P,)
    order = np.argsort(angles)
    sorted_angles = angles[order]
    gaps = np.diff(np.concatenate([sorted_angles, sorted_angles[:1] + 2 * np.pi]))  # (P,)
    largest = int(np.argmax(gaps))
    arc = 2 * np.pi - gaps[largest]
    if np.degrees(arc) < MIN_CONTACT_ARC_DEG:
        return None
    # The arc runs from the pixel after the largest gap to the pixel before it (cyclically).
    start = (largest + 1) % len(order)
    ring = np.roll(order, -start)  # contact pixels in angular order along the arc
    first = ring[:END_PIXELS]
    last = ring[-END_PIXELS:]
    points = np.array(
        [[xs[first].mean(), ys[first].mean()], [xs[last].mean(), ys[last].mean()]], dtype=np.float32
    )
    return points


def insertion_points_distance(
    points: np.ndarray, other: np.ndarray, spacing_xy: np.ndarray | float = 1.0
) -> float:
    """Mean distance between two pairs of insertion points ``(2, 2)`` (x, y) in the closer pairing.

    Which end of the contact arc is "first" is not anatomical, so the two pairings are tried.
    ``spacing_xy`` (mm per pixel, scalar or ``(sx, sy)``) turns pixel offsets into mm.
    """
    scale = np.asarray(spacing_xy, float)
    straight = np.linalg.norm((points - other) * scale, axis=1).mean()
    swapped = np.linalg.norm((points - other[::-1]) * scale, axis=1).mean()
    return float(min(straight, swapped))


def septal_direction(mask: np.ndarray) -> np.ndarray | None:
    """Unit vector (x, y) from the LV centre towards the septum mid-point between the insertion points."""
    points = rv_insertion_points(mask)
    if points is None or not (mask == Label.LV).any():
        return None
    cy, cx = ndimage.center_of_mass(mask == Label.LV)
    mid = points.mean(axis=0) - np.array([cx, cy])
    norm = np.linalg.norm(mid)
    return None if norm == 0 else (mid / norm).astype(np.float32)
