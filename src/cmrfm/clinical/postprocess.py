"""Post-processing that keeps predicted cardiac anatomy plausible.

Applied to one frame's stack of labels ``(H, W, Z)`` (or ``(X, Y, Z)``: only the last axis must be
the slice axis) in the internal label convention:

1. **Largest connected component per structure** in 3D (in-plane 8-connectivity, through-plane
   face connectivity), so a spurious blob of "LV" in the liver is dropped. Myocardium, infarct and
   MVO are one structure here (the LV wall), so scar keeps its place inside the wall.
2. **Holes filled** slice by slice: holes inside the LV blood pool become LV; holes of the LV
   (blood pool + wall) that are not LV become myocardium; holes inside the RV become RV.
3. **Myocardium around the LV**: on slices where the LV blood pool is present, wall pieces that do
   not touch it (within :data:`WALL_CONTACT_PX`) are dropped; scar and MVO that do not touch the
   wall are dropped.

Every step only relabels pixels to background or to a neighbouring structure, never invents a
structure absent from the prediction.
"""

from __future__ import annotations

import numpy as np
from scipy import ndimage

from cmrfm.constants import Label

#: In-plane 8-connectivity, through-plane 6-connectivity (slices are thick and may be shifted).
_STRUCTURE_3D = np.zeros((3, 3, 3), bool)
_STRUCTURE_3D[:, :, 1] = True
_STRUCTURE_3D[1, 1, :] = True
#: Wall pieces farther than this (pixels) from the LV blood pool on a slice are dropped.
WALL_CONTACT_PX = 2
#: The LV wall: myocardium plus scar and MVO.
WALL_LABELS: tuple[int, ...] = (Label.MYO, Label.INFARCT, Label.MVO)


def largest_component(mask: np.ndarray) -> np.ndarray:
    """The largest 3D connected component of a boolean ``(H, W, Z)`` mask (empty stays empty)."""
    labels, n = ndimage.label(mask, structure=_STRUCTURE_3D)
    if n <= 1:
        return mask.copy()
    sizes = np.bincount(labels.ravel())[1:]  # (n,)
    return labels == (int(np.argmax(sizes)) + 1)


def _fill_holes_2d(mask: np.ndarray) -> np.ndarray:
    """Per-slice hole filling of a boolean ``(H, W, Z)`` mask."""
    out = np.empty_like(mask)
    for z in range(mask.shape[-1]):
        out[..., z] = ndimage.binary_fill_holes(mask[..., z])
    return out


def _touching(pieces: np.ndarray, anchor: np.ndarray, distance: int) -> np.ndarray:
    """The 2D components of ``pieces`` (per slice) within ``distance`` px of ``anchor``."""
    keep = np.zeros_like(pieces)
    structure = np.ones((3, 3), bool)
    for z in range(pieces.shape[-1]):
        if not pieces[..., z].any():
            continue
        near = ndimage.binary_dilation(anchor[..., z], structure=structure, iterations=distance)
        labels, _n = ndimage.label(pieces[..., z], structure=structure)
        hit = np.unique(labels[near & (labels > 0)])
        keep[..., z] = np.isin(labels, hit[hit > 0])
    return keep


def clean_stack(mask: np.ndarray) -> np.ndarray:
    """Post-processes one frame's label stack ``(H, W, Z)`` (internal ids); returns a new array."""
    mask = np.asarray(mask)
    if mask.ndim == 2:
        return clean_stack(mask[..., None])[..., 0]
    out = np.zeros_like(mask, dtype=np.uint8)
    wall = np.isin(mask, WALL_LABELS)
    lv = largest_component(mask == Label.LV)
    rv = largest_component(mask == Label.RV)
    wall = largest_component(wall)
    # Myocardium around the LV: on slices with blood pool, keep wall pieces touching it.
    has_lv = lv.any(axis=(0, 1))  # (Z,)
    if has_lv.any():
        near = _touching(wall, lv, WALL_CONTACT_PX)
        wall = np.where(has_lv[None, None, :], near, wall)
    lv = _fill_holes_2d(lv) & ~rv
    ring_filled = _fill_holes_2d(lv | wall)
    wall_labels = np.where(wall, mask, 0)
    wall_labels[ring_filled & ~lv & ~wall] = Label.MYO  # holes in the wall become myocardium
    scar = np.isin(wall_labels, (Label.INFARCT, Label.MVO))
    if scar.any():
        # Scar that does not touch plain myocardium (or the blood pool) is dropped.
        anchor = (wall_labels == Label.MYO) | lv
        floating = scar & ~_touching(scar, anchor, 1)
        wall_labels[floating] = Label.BACKGROUND
    out[wall_labels > 0] = wall_labels[wall_labels > 0]
    out[_fill_holes_2d(rv) & (out == 0)] = Label.RV
    out[lv] = Label.LV
    # Other structures (LA, RA, ...): their largest component, where nothing else claimed the pixel.
    for label in np.unique(mask):
        if label in (Label.BACKGROUND, Label.LV, Label.RV, *WALL_LABELS):
            continue
        keep = largest_component(mask == label) & (out == 0)
        out[keep] = label
    return out


def clean_frames(masks: np.ndarray) -> np.ndarray:
    """:func:`clean_stack` on every frame of ``(H, W, Z, T)`` labels."""
    return np.stack([clean_stack(masks[..., t]) for t in range(masks.shape[-1])], axis=-1)


__all__ = ["WALL_CONTACT_PX", "clean_frames", "clean_stack", "largest_component"]
