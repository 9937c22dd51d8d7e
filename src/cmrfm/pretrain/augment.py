"""CMR augmentations for self-supervised pretraining, batched in torch (no colour jitter).

Geometry: one affine resampling per image does a random resized crop *that keeps the heart in view*
(prepared CMR crops are heart-centred, so crop centres stay near the image centre), a rotation and a
flip. Intensity: gamma, contrast, Gaussian noise, Gaussian blur. MR physics: k-space artefacts, i.e.
corrupted phase-encode lines (spikes / dropped lines) and ghosting from a periodic phase error along
the phase-encode direction, applied in the Fourier domain. Every random draw comes from an explicit
:class:`torch.Generator`, so a batch's views depend only on (seed, step, rank): exact resume needs
no extra state.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
import torch.nn.functional as F

from cmrfm.models.vit import standardize

#: Intensity range after per-image min-max normalisation.
UNIT_EPS = 1e-6
#: Blur kernel half-width in multiples of sigma.
BLUR_TRUNCATE = 2.0


@dataclass
class AugmentConfig:
    """Probabilities and ranges of the CMR augmentations.

    Attributes:
        max_center_shift: Largest crop-centre offset from the image centre, as a fraction of the side.
        rotation_deg: Rotations are drawn uniformly in ``[-rotation_deg, rotation_deg]``.
        aspect: Log-uniform aspect-ratio range of crops.
        flip_p: Probability of a left-right flip (then an up-down flip with the same probability).
        gamma: Log-uniform range of the gamma exponent.
        gamma_p: Probability of a gamma change.
        contrast: Range of the contrast factor around the image mean.
        contrast_p: Probability of a contrast change.
        noise_std: Upper bound of Gaussian noise std (on [0, 1] intensities).
        noise_p: Probability of added noise.
        blur_sigma: Range of the blur sigma in pixels.
        blur_p: Probability of blur.
        kspace_p: Probability of a k-space artefact (line corruption or ghosting).
        kspace_lines: Largest fraction of phase-encode lines corrupted.
        ghost_strength: Upper bound of the ghosting phase-error amplitude (radians).
    """

    max_center_shift: float = 0.12
    rotation_deg: float = 180.0
    aspect: tuple[float, float] = (0.8, 1.25)
    flip_p: float = 0.5
    gamma: tuple[float, float] = (0.7, 1.5)
    gamma_p: float = 0.5
    contrast: tuple[float, float] = (0.75, 1.25)
    contrast_p: float = 0.5
    noise_std: float = 0.05
    noise_p: float = 0.3
    blur_sigma: tuple[float, float] = (0.3, 1.2)
    blur_p: float = 0.3
    kspace_p: float = 0.2
    kspace_lines: float = 0.03
    ghost_strength: float = 0.6


def _uniform(gen: torch.Generator, n: int, low: float, high: float) -> torch.Tensor:
    return low + (high - low) * torch.rand(n, generator=gen)


def _bernoulli(gen: torch.Generator, n: int, p: float) -> torch.Tensor:
    return torch.rand(n, generator=gen) < p


def unit_range(x: torch.Tensor) -> torch.Tensor:
    """Min-max normalises each (C, H, W) image of a (B, C, H, W) batch to [0, 1]."""
    flat = x.flatten(1)  # (B, C·H·W)
    lo = flat.min(dim=1).values.view(-1, 1, 1, 1)
    hi = flat.max(dim=1).values.view(-1, 1, 1, 1)
    return (x - lo) / (hi - lo + UNIT_EPS)


def random_resized_crop(
    x: torch.Tensor,
    out_size: int,
    scale: tuple[float, float],
    gen: torch.Generator,
    cfg: AugmentConfig,
) -> torch.Tensor:
    """Heart-centred random resized crops with rotation and flips, one bilinear resampling per image.

    Args:
        x: (B, 1, H, W) images.
        out_size: Output side in pixels.
        scale: Range of the crop area as a fraction of the image area.
        gen: Random generator.
        cfg: Augmentation settings (centre shift, rotation, aspect, flips).

    Returns:
        (B, 1, out_size, out_size) crops.
    """
    b = x.shape[0]
    area = _uniform(gen, b, *scale)
    log_aspect = _uniform(gen, b, math.log(cfg.aspect[0]), math.log(cfg.aspect[1]))
    aspect = log_aspect.exp()
    half_w = (area * aspect).sqrt().clamp(max=1.0)  # crop half-sides in normalised [-1, 1] units
    half_h = (area / aspect).sqrt().clamp(max=1.0)
    shift = 2 * cfg.max_center_shift
    cx = _uniform(gen, b, -shift, shift)
    cy = _uniform(gen, b, -shift, shift)
    angle = _uniform(gen, b, -cfg.rotation_deg, cfg.rotation_deg) * (math.pi / 180)
    flip_x = torch.where(_bernoulli(gen, b, cfg.flip_p), -1.0, 1.0)
    flip_y = torch.where(_bernoulli(gen, b, cfg.flip_p), -1.0, 1.0)
    cos, sin = angle.cos(), angle.sin()
    theta = torch.zeros(b, 2, 3)  # output grid -> input coordinates
    theta[:, 0, 0] = cos * half_w * flip_x
    theta[:, 0, 1] = -sin * half_h * flip_y
    theta[:, 1, 0] = sin * half_w * flip_x
    theta[:, 1, 1] = cos * half_h * flip_y
    theta[:, 0, 2] = cx
    theta[:, 1, 2] = cy
    grid = F.affine_grid(theta.to(x.dtype), [b, x.shape[1], out_size, out_size], align_corners=False)
    return F.grid_sample(x, grid, mode="bilinear", padding_mode="zeros", align_corners=False)


def gaussian_blur(x: torch.Tensor, sigma: torch.Tensor) -> torch.Tensor:
    """Blurs each image of (B, 1, H, W) with its own sigma (B,) using separable grouped convolutions."""
    b, c, h, w = x.shape
    radius = max(1, math.ceil(BLUR_TRUNCATE * float(sigma.max())))
    t = torch.arange(-radius, radius + 1, dtype=x.dtype)
    kernel = torch.exp(-0.5 * (t[None] / sigma[:, None].to(x.dtype)) ** 2)  # (B, K)
    kernel = kernel / kernel.sum(dim=1, keepdim=True)
    img = x.reshape(1, b * c, h, w)  # (1, B·C, H, W): one group per image
    kx = kernel.repeat_interleave(c, 0)[:, None, None, :]  # (B·C, 1, 1, K)
    ky = kernel.repeat_interleave(c, 0)[:, None, :, None]  # (B·C, 1, K, 1)
    img = F.conv2d(F.pad(img, (radius, radius, 0, 0), mode="reflect"), kx, groups=b * c)
    img = F.conv2d(F.pad(img, (0, 0, radius, radius), mode="reflect"), ky, groups=b * c)
    return img.reshape(b, c, h, w)


def kspace_artefacts(x: torch.Tensor, gen: torch.Generator, cfg: AugmentConfig) -> torch.Tensor:
    """Corrupts k-space of each image: random phase-encode lines (spikes/dropouts) and ghosting.

    Half of the affected images get line corruption, the other half ghosting; the phase-encode
    direction (rows or columns) is drawn per image. Returns magnitude images of the same shape.
    """
    b, _, h, w = x.shape
    transpose = _bernoulli(gen, b, 0.5)
    img = torch.where(transpose.view(b, 1, 1, 1), x.transpose(-2, -1), x) if h == w else x
    k = torch.fft.fftshift(torch.fft.fft2(img.float()), dim=(-2, -1))  # (B, C, H, W) complex
    ky = torch.arange(h, dtype=torch.float32) - h // 2  # phase-encode line index
    lines = _bernoulli(gen, b, 0.5)
    # Line corruption: a few random lines scaled (dropout) or amplified (spike) with random phase.
    frac = _uniform(gen, b, 0.0, cfg.kspace_lines)
    hit = torch.rand(b, h, generator=gen) < frac[:, None]  # (B, H)
    gain = torch.where(torch.rand(b, h, generator=gen) < 0.5, 0.0, 3.0)  # dropout or spike
    phase = _uniform(gen, b * h, -math.pi, math.pi).view(b, h)
    factor_lines = torch.where(hit, gain * torch.exp(1j * phase), torch.ones(b, h, dtype=torch.complex64))
    # Ghosting: a periodic phase error along the phase-encode direction (every other line).
    amp = _uniform(gen, b, 0.1, cfg.ghost_strength)
    alternating = torch.where(ky.remainder(2) == 0, 1.0, -1.0)  # (H,)
    factor_ghost = torch.exp(1j * (amp[:, None] * alternating[None]))  # (B, H)
    factor = torch.where(lines[:, None], factor_lines, factor_ghost.to(torch.complex64))  # (B, H)
    k = k * factor[:, None, :, None]
    out = torch.fft.ifft2(torch.fft.ifftshift(k, dim=(-2, -1))).abs().to(x.dtype)
    if h == w:
        out = torch.where(transpose.view(b, 1, 1, 1), out.transpose(-2, -1), out)
    return out


def intensity_augment(x: torch.Tensor, gen: torch.Generator, cfg: AugmentConfig) -> torch.Tensor:
    """Gamma, contrast, blur, k-space artefacts and noise on (B, 1, H, W) images; returns [0, 1]-ish."""
    b = x.shape[0]
    x = unit_range(x)
    gamma = torch.exp(_uniform(gen, b, math.log(cfg.gamma[0]), math.log(cfg.gamma[1])))
    gamma = torch.where(_bernoulli(gen, b, cfg.gamma_p), gamma, torch.ones(b))
    x = x.clamp_min(0).pow(gamma.view(b, 1, 1, 1).to(x.dtype))
    contrast = _uniform(gen, b, *cfg.contrast)
    contrast = torch.where(_bernoulli(gen, b, cfg.contrast_p), contrast, torch.ones(b)).view(b, 1, 1, 1)
    mean = x.mean(dim=(-2, -1), keepdim=True)
    x = (x - mean) * contrast.to(x.dtype) + mean
    blur = _bernoulli(gen, b, cfg.blur_p)
    sigma = _uniform(gen, b, *cfg.blur_sigma)
    if blur.any():
        idx = blur.nonzero().squeeze(1)
        x = x.index_copy(0, idx, gaussian_blur(x[idx], sigma[idx]))
    art = _bernoulli(gen, b, cfg.kspace_p)
    if art.any():
        idx = art.nonzero().squeeze(1)
        sub = torch.Generator().manual_seed(int(torch.randint(0, 2**62, (1,), generator=gen)))
        x = x.index_copy(0, idx, kspace_artefacts(x[idx], sub, cfg))
    std = _uniform(gen, b, 0.0, cfg.noise_std) * _bernoulli(gen, b, cfg.noise_p)
    noise = torch.randn(x.shape, generator=gen, dtype=x.dtype)
    return x + noise * std.view(b, 1, 1, 1).to(x.dtype)


def augment_view(
    x: torch.Tensor, out_size: int, scale: tuple[float, float], gen: torch.Generator, cfg: AugmentConfig
) -> torch.Tensor:
    """One augmented, standardised view (B, 1, out_size, out_size) of images (B, 1, H, W)."""
    crops = random_resized_crop(x, out_size, scale, gen, cfg)
    return standardize(intensity_augment(crops, gen, cfg))


@dataclass
class MultiCropConfig:
    """DINO multi-crop: 2 global and ``n_local`` local views.

    Attributes:
        global_size: Side of global crops (pixels).
        local_size: Side of local crops (pixels); a multiple of the patch size.
        n_global: Number of global crops.
        n_local: Number of local crops (0 disables).
        global_scale: Area-fraction range of global crops.
        local_scale: Area-fraction range of local crops.
    """

    global_size: int = 128
    local_size: int = 48
    n_global: int = 2
    n_local: int = 6
    global_scale: tuple[float, float] = (0.4, 1.0)
    local_scale: tuple[float, float] = (0.08, 0.4)


def multi_crop(
    x: torch.Tensor, gen: torch.Generator, crops: MultiCropConfig, cfg: AugmentConfig
) -> tuple[list[torch.Tensor], list[torch.Tensor]]:
    """Global and local standardised views of a batch (B, 1, H, W): two lists of (B, 1, s, s)."""
    globals_ = [
        augment_view(x, crops.global_size, crops.global_scale, gen, cfg) for _ in range(crops.n_global)
    ]
    locals_ = [augment_view(x, crops.local_size, crops.local_scale, gen, cfg) for _ in range(crops.n_local)]
    return globals_, locals_
