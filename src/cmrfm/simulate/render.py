"""Rendering: sample the phantom finely on a plane, integrate to pixels, shade, add noise and artefacts.

Per plane, the static body is sampled once on a fine grid (``supersample``² samples per pixel); the
heart is re-sampled per frame only inside its bounding box and at ``depth_samples`` positions through
the slice thickness. Signals (not labels) are averaged, giving partial volume in-plane and
through-plane. Labels are the tissue at each pixel centre on the slice's centre plane.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

import numpy as np

from cmrfm.simulate.anatomy import HeartCoords, Phantom
from cmrfm.simulate.contrast import SignalTable
from cmrfm.simulate.kspace import (
    GRADE_AMPLITUDE_MM,
    coil_sensitivities,
    line_positions,
    mix_lines,
    shading_from_sensitivities,
)
from cmrfm.simulate.motion import respiratory_shift
from cmrfm.simulate.planes import Plane
from cmrfm.simulate.tissue import Tissue

#: Extra pixels around the heart's bounding box.
BOX_MARGIN_PX = 2
#: Texture: number of random plane waves, their wavelength range (mm) and RMS amplitude.
TEXTURE_WAVES = 12
TEXTURE_WAVELENGTH_MM = (8.0, 40.0)
TEXTURE_AMPLITUDE = 0.05


@dataclass
class PlaneRender:
    """Clean (noise-free) signal and labels of one plane over frames.

    Attributes:
        signal: ``(C, nx, ny, T)`` float32 per signal channel.
        labels: ``(nx, ny, T)`` uint8 (internal label ids).
        body: ``(nx, ny)`` bool, inside the body outline.
    """

    signal: np.ndarray
    labels: np.ndarray
    body: np.ndarray


def _fine_index(n: int, s: int) -> np.ndarray:
    offsets = (np.arange(s) + 0.5) / s - 0.5
    return (np.arange(n)[:, None] + offsets[None, :]).reshape(-1)  # (n * s,)


def _pool(fine: np.ndarray, s: int) -> np.ndarray:
    """Mean over s×s blocks of the last two axes."""
    *lead, a, b = fine.shape
    return fine.reshape(*lead, a // s, s, b // s, s).mean(axis=(-3, -1))


def render_plane(
    phantom: Phantom,
    plane: Plane,
    t_fracs: np.ndarray,
    table: SignalTable,
    label_table: np.ndarray,
    shift: np.ndarray,
    supersample: int,
    depth_samples: int,
    with_labels: bool = True,
) -> PlaneRender:
    """Renders one plane at cycle fractions ``t_fracs`` with the anatomy displaced by ``shift``."""
    s, depth_n = supersample, depth_samples
    nx, ny = plane.shape
    n_t = len(t_fracs)
    n_ch = table.values.shape[0]
    fi, fj = _fine_index(nx, s), _fine_index(ny, s)
    fine_pts = plane.points(fi, fj).reshape(-1, 3)  # (nx*s*ny*s, 3)
    bg = phantom.body.classify(fine_pts, shift).reshape(nx * s, ny * s)
    bg_signal = _pool(table.values[:, bg], s)  # (C, nx, ny)
    signal = np.repeat(bg_signal[..., None], n_t, axis=-1)  # (C, nx, ny, T)
    centre_pts = plane.points(np.arange(nx), np.arange(ny))  # (nx, ny, 3)
    body = phantom.body.classify(centre_pts.reshape(-1, 3), shift).reshape(nx, ny) != Tissue.AIR
    labels = np.zeros((nx, ny, n_t), dtype=np.uint8)
    depths = plane.thickness * ((np.arange(depth_n) + 0.5) / depth_n - 0.5)
    heart = phantom.heart
    states = [heart.state(float(t)) for t in t_fracs]

    # Bounding box of the heart over the cycle (ED and ES extremes, every depth), at pixel centres.
    extent = np.zeros((nx, ny), dtype=bool)
    probe_states = [heart.state(0.0), heart.state(heart.es_fraction)]
    for depth in depths:
        pts = plane.points(np.arange(nx), np.arange(ny), depth).reshape(-1, 3)
        hc = HeartCoords.from_points(phantom.to_heart(pts, shift))
        for st in probe_states:
            extent |= (heart.classify(hc, st) > 0).reshape(nx, ny)
    if not extent.any():
        return PlaneRender(signal.astype(np.float32), labels, body)
    ii, jj = np.nonzero(extent)
    i0, i1 = max(ii.min() - BOX_MARGIN_PX, 0), min(ii.max() + BOX_MARGIN_PX + 1, nx)
    j0, j1 = max(jj.min() - BOX_MARGIN_PX, 0), min(jj.max() + BOX_MARGIN_PX + 1, ny)
    bx, by = i1 - i0, j1 - j0
    box_fi, box_fj = _fine_index(bx, s) + i0, _fine_index(by, s) + j0
    coords = [
        HeartCoords.from_points(phantom.to_heart(plane.points(box_fi, box_fj, d).reshape(-1, 3), shift))
        for d in depths
    ]
    bg_box = bg[i0 * s : i1 * s, j0 * s : j1 * s].reshape(-1)
    centre_coords = None
    if with_labels:
        centre_coords = HeartCoords.from_points(
            phantom.to_heart(plane.points(np.arange(i0, i1), np.arange(j0, j1)).reshape(-1, 3), shift)
        )
    for t_index, st in enumerate(states):
        acc = np.zeros((n_ch, bx * s * by * s), dtype=np.float32)
        for hc in coords:
            cls = heart.classify(hc, st)
            cls = np.where(cls > 0, cls, bg_box)
            acc += table.values[:, cls]
        fine = (acc / depth_n).reshape(n_ch, bx * s, by * s)
        signal[:, i0:i1, j0:j1, t_index] = _pool(fine, s)
        if centre_coords is not None:
            labels[i0:i1, j0:j1, t_index] = label_table[heart.classify(centre_coords, st)].reshape(bx, by)
    return PlaneRender(signal.astype(np.float32), labels, body)


def texture_field(
    points: np.ndarray, rng: np.random.Generator, amplitude: float = TEXTURE_AMPLITUDE
) -> np.ndarray:
    """Smooth random multiplicative texture ``(nx, ny)`` (sum of plane waves in world mm).

    Stands in for the tissue heterogeneity, flow and trabeculation mottling a piecewise-constant
    phantom lacks.
    """
    direction = rng.normal(size=(TEXTURE_WAVES, 3))
    direction /= np.linalg.norm(direction, axis=1, keepdims=True)
    wavelength = rng.uniform(*TEXTURE_WAVELENGTH_MM, TEXTURE_WAVES)
    phase = rng.uniform(0, 2 * np.pi, TEXTURE_WAVES)
    k = direction * (2 * np.pi / wavelength)[:, None]  # (K, 3)
    waves = np.cos(points @ k.T + phase)  # (nx, ny, K)
    return (1.0 + amplitude * waves.sum(-1) / np.sqrt(TEXTURE_WAVES / 2)).astype(np.float32)


@dataclass
class Acquisition:
    """A rendered series.

    Attributes:
        image: ``(nx, ny, Z, T)`` float32.
        labels: ``(nx, ny, Z, T)`` uint8.
        body: ``(nx, ny, Z)`` bool.
        info: Acquisition facts for the sidecar (SNR, grade, amplitude, ...).
    """

    image: np.ndarray
    labels: np.ndarray
    body: np.ndarray
    info: dict = field(default_factory=dict)


def acquire(
    phantom: Phantom,
    planes: list[Plane],
    t_fracs: np.ndarray,
    table: SignalTable,
    label_table: np.ndarray,
    shifts: np.ndarray,
    rng: np.random.Generator,
    supersample: int = 2,
    depth_samples: int = 3,
    snr: float = 25.0,
    coil_shading: float = 0.5,
    n_coils: int = 8,
    grade: int = 1,
    motion_levels: int = 5,
    rr_ms: float = 900.0,
) -> Acquisition:
    """Renders a series: clean planes, respiratory k-space artefacts, coil shading and noise.

    Args:
        phantom: The subject.
        planes: Planes of the series (a SAX stack or one long-axis plane).
        t_fracs: Cycle fractions of the frames.
        table: Signal table of the sequence.
        label_table: Tissue → label lookup.
        shifts: Per-plane anatomy displacement ``(Z, 3)`` (breath-hold positions).
        rng: Random generator.
        supersample: Fine samples per pixel edge.
        depth_samples: Samples through the slice.
        snr: Reference-tissue SNR (magnitude sequences).
        coil_shading: Shading strength 0..1 (magnitude sequences).
        n_coils: Coils for the shading.
        grade: CMRxMotion grade 1..3 (respiratory ghosting; magnitude sequences only).
        motion_levels: Distinct respiratory positions mixed in k-space.
        rr_ms: RR interval (ms), for the timing of lines.
    """
    nx, ny = planes[0].shape
    n_t = len(t_fracs)
    image = np.zeros((nx, ny, len(planes), n_t), dtype=np.float32)
    labels = np.zeros((nx, ny, len(planes), n_t), dtype=np.uint8)
    bodies = np.zeros((nx, ny, len(planes)), dtype=bool)
    low, high = GRADE_AMPLITUDE_MM[grade]
    amplitude = 0.0 if table.is_map else float(rng.uniform(low, high))
    noise_sd = table.reference / snr
    for z, plane in enumerate(planes):
        rendered = render_plane(
            phantom, plane, t_fracs, table, label_table, shifts[z], supersample, depth_samples
        )
        labels[:, :, z] = rendered.labels
        bodies[:, :, z] = rendered.body
        if table.is_map:
            values, sd = rendered.signal[0], rendered.signal[1]
            noisy = values + sd * rng.standard_normal(values.shape, dtype=np.float32)
            image[:, :, z] = np.maximum(noisy, 0.0)
            continue
        pts = plane.points(np.arange(nx), np.arange(ny))
        sens = coil_sensitivities(pts, n_coils, phantom.body.lr, phantom.body.ap, plane.centre, rng)
        shade = shading_from_sensitivities(sens, rendered.body, coil_shading) * texture_field(pts, rng)
        clean = rendered.signal[0] * shade[..., None]  # (nx, ny, T)
        if amplitude > 0:
            clean = _motion_corrupt(
                phantom,
                plane,
                t_fracs,
                table,
                label_table,
                shifts[z],
                supersample,
                depth_samples,
                clean,
                shade,
                amplitude,
                motion_levels,
                rr_ms,
                rng,
            )
        noise = rng.standard_normal((2, *clean.shape), dtype=np.float32) * np.float32(noise_sd)
        image[:, :, z] = np.sqrt((clean + noise[0]) ** 2 + noise[1] ** 2)
    info = {
        "snr": None if table.is_map else round(float(snr), 2),
        "noise_sd": round(float(noise_sd), 6),
        "motion_grade": int(grade),
        "motion_amplitude_mm": round(amplitude, 2),
        "supersample": supersample,
        "depth_samples": depth_samples,
    }
    return Acquisition(image, labels, bodies, info)


def _motion_corrupt(
    phantom: Phantom,
    plane: Plane,
    t_fracs: np.ndarray,
    table: SignalTable,
    label_table: np.ndarray,
    base_shift: np.ndarray,
    supersample: int,
    depth_samples: int,
    clean: np.ndarray,
    shade: np.ndarray,
    amplitude: float,
    levels: int,
    rr_ms: float,
    rng: np.random.Generator,
) -> np.ndarray:
    """Replaces each phase-encode line by the line of the anatomy at that line's respiratory position."""
    ny = plane.shape[1]
    phases = line_positions(ny, amplitude, rr_ms, rng)
    depth = 0.5 * (1 - np.cos(phases))  # 0..1 of the amplitude
    level = np.minimum((depth * levels).astype(int), levels - 1)
    centres = (np.arange(levels) + 0.5) / levels
    per_level = []
    for k in range(levels):
        if not np.any(level == k):
            per_level.append(None)
            continue
        phase = math.acos(1 - 2 * centres[k])
        shift = base_shift + respiratory_shift(amplitude, phase)
        r = render_plane(
            phantom, plane, t_fracs, table, label_table, shift, supersample, depth_samples, False
        )
        per_level.append(r.signal[0] * shade[..., None])
    out = np.empty_like(clean)
    for t in range(clean.shape[-1]):
        stack = np.stack([clean[..., t] if img is None else img[..., t] for img in per_level])  # (K, nx, ny)
        out[..., t] = mix_lines(stack, level)
    return out
