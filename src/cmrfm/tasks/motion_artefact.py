"""Respiratory-motion artefacts of a known CMRxMotion grade on any 2D image, through k-space.

The simulator corrupts its own renders by re-rendering the anatomy at several respiratory
positions (:func:`cmrfm.simulate.render.acquire`). A real image has no anatomy model, so here the
positions are made by warping the image: the heart region (from the label map when there is one,
else the image centre) moves by the full displacement, the rest of the field of view by a fraction
of it (the chest wall moves less than the heart). Then, exactly as in the simulator, each
phase-encode line is taken from the position at which it was acquired
(:func:`cmrfm.simulate.kspace.line_positions`, :func:`cmrfm.simulate.kspace.mix_lines`), with the
simulator's per-grade displacement ranges (:data:`cmrfm.simulate.kspace.GRADE_AMPLITUDE_MM`).

Limits: only in-plane motion is modelled (through-plane motion changes the anatomy in the slice),
and the corruption is applied on the cropped 128-pixel learning grid, so ghosts wrap within the crop
rather than the full field of view.
"""

from __future__ import annotations

import math

import numpy as np
from scipy import ndimage

from cmrfm.simulate.kspace import GRADE_AMPLITUDE_MM, line_positions, mix_lines

#: Respiratory positions mixed in k-space (as the simulator's default ``motion_levels``).
MOTION_LEVELS = 5
#: Share of the displacement that lies in the image plane (the rest is through-plane).
IN_PLANE_SHARE = (0.7, 1.0)
#: Displacement of tissue away from the heart relative to the heart's.
BACKGROUND_SHARE = 0.3
#: Smoothing (pixels) of the heart weight map, and its dilation (pixels).
WEIGHT_SMOOTH_PX = 6.0
HEART_DILATE_PX = 6
#: Radius (fraction of the image side) of the assumed heart region without a label map.
DEFAULT_HEART_RADIUS = 0.25
#: RR-interval range (ms) for the timing of the acquired lines.
RR_MS = (700.0, 1100.0)


def heart_weight(shape: tuple[int, int], heart: np.ndarray | None) -> np.ndarray:
    """Per-pixel share of the respiratory displacement ``(H, W)``: ~1 on the heart, 0.3 far from it."""
    if heart is None or not np.any(heart):
        ys, xs = np.mgrid[0 : shape[0], 0 : shape[1]]
        radius = DEFAULT_HEART_RADIUS * min(shape)
        heart = np.hypot(ys - (shape[0] - 1) / 2, xs - (shape[1] - 1) / 2) < radius
    region = ndimage.binary_dilation(heart, iterations=HEART_DILATE_PX).astype(np.float32)
    smooth = ndimage.gaussian_filter(region, WEIGHT_SMOOTH_PX)
    smooth = smooth / max(float(smooth.max()), 1e-6)
    return (BACKGROUND_SHARE + (1 - BACKGROUND_SHARE) * smooth).astype(np.float32)


def _displaced(image: np.ndarray, dy: np.ndarray, dx: np.ndarray) -> np.ndarray:
    """The image with tissue at each pixel moved by ``(dy, dx)`` pixels (pull-back warp)."""
    ys, xs = np.mgrid[0 : image.shape[0], 0 : image.shape[1]].astype(np.float32)
    return ndimage.map_coordinates(image, [ys - dy, xs - dx], order=1, mode="nearest")


def corrupt_motion(
    image: np.ndarray,
    grade: int,
    spacing_mm: float,
    rng: np.random.Generator,
    heart: np.ndarray | None = None,
    phase_axis: int | None = None,
) -> tuple[np.ndarray, dict[str, float]]:
    """Respiratory ghosting and blur of CMRxMotion ``grade`` on an ``(H, W)`` image.

    Args:
        image: ``(H, W)`` image (any intensity scale; returned on the same scale).
        grade: 1 (none), 2 (mild) or 3 (severe).
        spacing_mm: Pixel size (mm), to turn the grade's displacement range into pixels.
        rng: Random generator (amplitude, direction, breathing pattern).
        heart: Optional ``(H, W)`` bool heart mask (moves the most).
        phase_axis: Array axis of phase encoding (0 = rows, 1 = columns); random when None.

    Returns:
        The corrupted image (float32) and what was drawn (``amplitude_mm``, ``angle_deg``,
        ``phase_axis``).

    Raises:
        ValueError: For a grade outside 1..3 or a non-2D image.
    """
    if grade not in GRADE_AMPLITUDE_MM:
        raise ValueError(f"grade must be one of {sorted(GRADE_AMPLITUDE_MM)}, got {grade}")
    image = np.asarray(image, np.float32)
    if image.ndim != 2:
        raise ValueError(f"expected an (H, W) image, got shape {image.shape}")
    low, high = GRADE_AMPLITUDE_MM[grade]
    amplitude = float(rng.uniform(low, high)) * float(rng.uniform(*IN_PLANE_SHARE))
    angle = float(rng.uniform(0, 2 * math.pi))
    axis = int(rng.integers(2)) if phase_axis is None else int(phase_axis)
    info = {"amplitude_mm": amplitude, "angle_deg": math.degrees(angle), "phase_axis": float(axis)}
    if amplitude <= 0:
        return image.copy(), info
    weight = heart_weight(image.shape, heart) * (amplitude / spacing_mm)  # (H, W) pixels at full depth
    n_lines = image.shape[axis]
    phases = line_positions(n_lines, amplitude, float(rng.uniform(*RR_MS)), rng)
    depth = 0.5 * (1 - np.cos(phases))  # (n_lines,) 0..1 of the amplitude
    level = np.minimum((depth * MOTION_LEVELS).astype(int), MOTION_LEVELS - 1)
    centres = (np.arange(MOTION_LEVELS) + 0.5) / MOTION_LEVELS
    positions = np.stack(
        [_displaced(image, c * weight * math.sin(angle), c * weight * math.cos(angle)) for c in centres]
    )  # (K, H, W)
    # mix_lines takes phase-encode lines along its last axis
    stack = positions if axis == 1 else positions.transpose(0, 2, 1)  # (K, ·, lines)
    low_value = float(image.min())
    mixed = mix_lines(stack - low_value, level) + low_value  # magnitude of a non-negative image
    out = mixed if axis == 1 else mixed.T
    return out.astype(np.float32), info
