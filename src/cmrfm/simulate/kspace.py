"""k-space: coil sensitivities, multi-coil data, Cartesian undersampling, respiratory-motion ghosts.

Phase encoding runs along array axis 1 (Y, the ``v`` direction of a plane); readout along axis 0.

Motion artefacts are made the way they arise: every phase-encode line is acquired in some heartbeat
at some respiratory position, so the k-space of the artefacted image takes each line from the image
of the anatomy at that line's position. Inconsistent lines give ghosts along phase encoding and blur.
Grades follow the CMRxMotion scale (Wang S et al., "The extreme cardiac MRI analysis challenge under
respiratory motion (CMRxMotion)", arXiv:2210.06385): 1 good, 2 mild artefacts (diagnostic),
3 severe (non-diagnostic). Free-breathing diaphragm excursion is ~10-25 mm and the heart moves
~0.6-0.8 of it (Wang Y et al., "Respiratory motion of the heart: kinematics and the implications for
the spatial resolution in coronary imaging", MRM 1995;33:713-719); grade amplitudes sit in that range.
"""

from __future__ import annotations

import numpy as np

from cmrfm.errors import ConfigError

#: Peak respiratory displacement (mm) range for each CMRxMotion grade.
GRADE_AMPLITUDE_MM: dict[int, tuple[float, float]] = {1: (0.0, 0.0), 2: (5.0, 8.0), 3: (12.0, 18.0)}
#: Heartbeats over which one segmented cine/LGE image is acquired (breath-hold length).
HEARTBEATS_RANGE = (10, 16)
#: Accelerations supported for undersampling masks, and default fully sampled centre lines.
ACCELERATIONS = (4, 8, 10)
DEFAULT_CENTRE_LINES = 24


def fft2c(image: np.ndarray) -> np.ndarray:
    """Centred orthonormal 2D FFT over the last two axes."""
    return np.fft.fftshift(np.fft.fft2(np.fft.ifftshift(image, axes=(-2, -1)), norm="ortho"), axes=(-2, -1))


def ifft2c(kspace: np.ndarray) -> np.ndarray:
    """Centred orthonormal 2D inverse FFT over the last two axes."""
    return np.fft.fftshift(np.fft.ifft2(np.fft.ifftshift(kspace, axes=(-2, -1)), norm="ortho"), axes=(-2, -1))


def coil_sensitivities(
    points: np.ndarray,
    n_coils: int,
    body_lr: float,
    body_ap: float,
    centre: np.ndarray,
    rng: np.random.Generator,
) -> np.ndarray:
    """Complex receive sensitivities of coils around the chest, ``(C, nx, ny)``.

    Args:
        points: World points of the pixels ``(nx, ny, 3)``.
        n_coils: Number of coils (half anterior, half posterior, around the body ellipse).
        body_lr: Body half-width (mm).
        body_ap: Body half-depth (mm).
        centre: World position the array is centred on (heart level).
        rng: Random generator (coil placement jitter, phases).
    """
    angles = np.linspace(0, 2 * np.pi, n_coils, endpoint=False) + rng.uniform(0, 2 * np.pi / n_coils)
    pos = np.stack(
        [
            1.1 * body_lr * np.cos(angles),
            1.1 * body_ap * np.sin(angles),
            centre[2] + rng.normal(0, 20, n_coils),
        ],
        -1,
    )  # (C, 3)
    width = 0.9 * body_lr
    d2 = ((points[None] - pos[:, None, None, :]) ** 2).sum(-1)  # (C, nx, ny)
    magnitude = np.exp(-d2 / (2 * width**2))
    phase = rng.uniform(0, 2 * np.pi, n_coils)[:, None, None] + 0.01 * (
        points[None, ..., 0] * rng.normal(size=(n_coils, 1, 1))
        + points[None, ..., 1] * rng.normal(size=(n_coils, 1, 1))
    )
    return (magnitude * np.exp(1j * phase)).astype(np.complex64)


def shading_from_sensitivities(sens: np.ndarray, body: np.ndarray, strength: float) -> np.ndarray:
    """Root-sum-of-squares intensity shading ``(nx, ny)``, mean 1 inside the body, blended by ``strength``."""
    rss = np.sqrt((np.abs(sens) ** 2).sum(0))
    mean = float(rss[body].mean()) if body.any() else float(rss.mean())
    return (1.0 + strength * (rss / mean - 1.0)).astype(np.float32)


def cartesian_mask(
    n_lines: int,
    acceleration: int,
    rng: np.random.Generator,
    centre_lines: int = DEFAULT_CENTRE_LINES,
    pattern: str = "random",
) -> np.ndarray:
    """Boolean phase-encode sampling mask ``(n_lines,)`` keeping ``centre_lines`` fully sampled.

    Args:
        n_lines: Phase-encode lines.
        acceleration: Nominal acceleration (4, 8, 10 ...): about ``n_lines / acceleration`` lines kept.
        rng: Random generator (random pattern).
        centre_lines: Fully sampled lines at the k-space centre (autocalibration).
        pattern: ``"random"`` (uniform random outer lines) or ``"equispaced"``.

    Raises:
        ConfigError: For an acceleration < 1 or an unknown pattern.
    """
    if acceleration < 1:
        raise ConfigError(f"acceleration must be >= 1, got {acceleration}")
    if pattern not in ("random", "equispaced"):
        raise ConfigError(f"unknown undersampling pattern {pattern!r}; use 'random' or 'equispaced'")
    mask = np.zeros(n_lines, dtype=bool)
    centre = min(centre_lines, n_lines)
    start = n_lines // 2 - centre // 2
    mask[start : start + centre] = True
    target = max(round(n_lines / acceleration), centre)
    remaining = target - centre
    if remaining > 0:
        outer = np.flatnonzero(~mask)
        if pattern == "equispaced":
            chosen = outer[:: max(1, len(outer) // remaining)][:remaining]
        else:
            chosen = rng.choice(outer, size=min(remaining, len(outer)), replace=False)
        mask[chosen] = True
    return mask


def multicoil_kspace(
    image: np.ndarray, sens: np.ndarray, noise_sd: float, rng: np.random.Generator
) -> np.ndarray:
    """Fully sampled multi-coil k-space ``(C, nx, ny)`` complex64 of an image with complex noise."""
    coil_images = sens * image[None]  # (C, nx, ny)
    kspace = fft2c(coil_images)
    noise = rng.standard_normal(kspace.shape) + 1j * rng.standard_normal(kspace.shape)
    return (kspace + noise_sd * noise).astype(np.complex64)


def undersampled_kspace(
    image: np.ndarray,
    sens: np.ndarray,
    acceleration: int,
    noise_sd: float,
    rng: np.random.Generator,
    centre_lines: int = DEFAULT_CENTRE_LINES,
) -> dict[str, np.ndarray]:
    """Multi-coil k-space, its undersampling mask and the zero-filled RSS reconstruction.

    Returns:
        ``kspace`` ``(C, nx, ny)`` complex64 (fully sampled), ``mask`` ``(ny,)`` bool, ``sensitivities``
        ``(C, nx, ny)``, ``zero_filled`` ``(nx, ny)`` float32 RSS of the masked data, ``target`` the image.
    """
    kspace = multicoil_kspace(image, sens, noise_sd, rng)
    mask = cartesian_mask(image.shape[1], acceleration, rng, centre_lines)
    masked = kspace * mask[None, None, :]
    zero_filled = np.sqrt((np.abs(ifft2c(masked)) ** 2).sum(0)).astype(np.float32)
    return {
        "kspace": kspace,
        "mask": mask,
        "sensitivities": sens,
        "zero_filled": zero_filled,
        "target": image.astype(np.float32),
    }


def line_positions(n_lines: int, amplitude_mm: float, rr_ms: float, rng: np.random.Generator) -> np.ndarray:
    """Respiratory phase (radians) at which each phase-encode line is acquired (linear ordering).

    Lines are split into segments acquired in consecutive heartbeats while the subject breathes.
    """
    beats = int(rng.integers(*HEARTBEATS_RANGE))
    period_ms = float(rng.uniform(3000, 5000))
    start = float(rng.uniform(0, 2 * np.pi))
    beat_of_line = np.minimum((np.arange(n_lines) * beats) // n_lines, beats - 1)
    return start + 2 * np.pi * beat_of_line * rr_ms / period_ms


def mix_lines(images: np.ndarray, level_of_line: np.ndarray) -> np.ndarray:
    """Artefacted magnitude image from per-position images ``(K, nx, ny)`` and each line's position."""
    kspace = fft2c(images.astype(np.complex64))  # (K, nx, ny)
    lines = np.arange(images.shape[2])
    mixed = kspace[level_of_line, :, lines].T  # (nx, ny)
    return np.abs(ifft2c(mixed)).astype(np.float32)


def ghosting_energy(image: np.ndarray, body: np.ndarray, margin: int = 4) -> float:
    """Mean squared intensity outside the (dilated) body over that inside: ghosts raise it.

    Args:
        image: ``(nx, ny)`` magnitude image.
        body: Boolean body mask ``(nx, ny)``.
        margin: Pixels the body is dilated by before measuring the background.
    """
    from scipy.ndimage import binary_dilation

    outside = ~binary_dilation(body, iterations=margin)
    if not outside.any() or not body.any():
        return 0.0
    return float(np.mean(image[outside] ** 2) / np.mean(image[body] ** 2))
