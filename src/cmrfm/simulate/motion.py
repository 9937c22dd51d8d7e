"""Cardiac and respiratory motion: the contraction curve and respiratory displacement.

The cardiac cycle is normalised to ``t`` in [0, 1): ED at 0, ES at ``es_fraction`` (~35 %), then
rapid filling, diastasis and the atrial kick. ``contraction(t)`` is 0 at ED and 1 at ES; every
moving part of the heart interpolates between its ED and ES shape with it.
"""

from __future__ import annotations

import numpy as np

from cmrfm.errors import ConfigError

#: Fraction of diastole taken by rapid filling, and where the atrial kick starts.
RAPID_FILLING_END = 0.4
ATRIAL_KICK_START = 0.75
#: Contraction left after rapid filling and before the atrial kick.
DIASTASIS_LEVEL = (0.22, 0.15)
#: Typical free-breathing period (s) and superior-inferior share of the respiratory excursion.
RESPIRATORY_PERIOD_S = 4.0
RESPIRATORY_DIRECTION = np.array([0.0, 0.25, 1.0]) / np.linalg.norm([0.0, 0.25, 1.0])  # mostly SI, some AP


def contraction(t: np.ndarray | float, es_fraction: float = 0.35) -> np.ndarray:
    """Contraction state in [0, 1] (0 = end-diastole, 1 = end-systole) at cycle fraction ``t``."""
    t = np.mod(np.asarray(t, dtype=np.float64), 1.0)
    systole = 0.5 * (1.0 - np.cos(np.pi * np.clip(t / es_fraction, 0.0, 1.0)))
    s = np.clip((t - es_fraction) / (1.0 - es_fraction), 0.0, 1.0)
    level_a, level_b = DIASTASIS_LEVEL
    rapid = 1.0 - (1.0 - level_a) * 0.5 * (1.0 - np.cos(np.pi * np.clip(s / RAPID_FILLING_END, 0.0, 1.0)))
    diastasis = level_a + (level_b - level_a) * np.clip(
        (s - RAPID_FILLING_END) / (ATRIAL_KICK_START - RAPID_FILLING_END), 0.0, 1.0
    )
    kick = (
        level_b
        * 0.5
        * (1.0 + np.cos(np.pi * np.clip((s - ATRIAL_KICK_START) / (1 - ATRIAL_KICK_START), 0, 1)))
    )
    diastole = np.where(s < RAPID_FILLING_END, rapid, np.where(s < ATRIAL_KICK_START, diastasis, kick))
    return np.where(t <= es_fraction, systole, diastole)


def frame_fractions(n_frames: int) -> np.ndarray:
    """Cycle fractions of ``n_frames`` evenly spaced frames, ED first.

    Raises:
        ConfigError: When ``n_frames`` < 1.
    """
    if n_frames < 1:
        raise ConfigError(f"number of frames must be >= 1, got {n_frames}")
    return np.arange(n_frames, dtype=np.float64) / n_frames


def es_frame(n_frames: int, es_fraction: float = 0.35) -> int:
    """Index of the frame nearest end-systole (maximum contraction)."""
    return int(np.argmax(contraction(frame_fractions(n_frames), es_fraction)))


def frame_times_ms(n_frames: int, heart_rate_bpm: float) -> np.ndarray:
    """Trigger times (ms) of the frames for a heart rate."""
    rr = 60_000.0 / heart_rate_bpm
    return frame_fractions(n_frames) * rr


def respiratory_shift(amplitude_mm: float | np.ndarray, phase: float | np.ndarray) -> np.ndarray:
    """World (RAS) displacement of the heart and abdomen at respiratory ``phase`` (radians).

    End-expiration (phase 0) is the reference position; inspiration moves organs inferiorly
    (and slightly anteriorly) by up to ``amplitude_mm``.

    Returns:
        Shape ``(..., 3)`` displacements in mm.
    """
    depth = 0.5 * (1.0 - np.cos(np.asarray(phase, dtype=np.float64))) * np.asarray(amplitude_mm)
    direction = RESPIRATORY_DIRECTION * np.array([1.0, 1.0, -1.0])  # inferior, anterior
    return depth[..., None] * direction
