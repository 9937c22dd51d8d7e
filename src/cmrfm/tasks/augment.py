"""Paired augmentation for labelled 2D items: one random transform moves image, mask and landmarks.

Spatial: rotation, isotropic scale, translation and flips as one affine warp (bilinear for the
image, nearest for masks; landmarks are mapped through the same matrix). Intensity: gamma,
contrast/brightness, Gaussian noise and blur. Torch only, per item, cheap enough for data workers.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
import torch.nn.functional as F


@dataclass
class AugmentConfig:
    """Augmentation ranges (probabilities in [0, 1], angles in degrees).

    Attributes:
        rotate_deg: Maximum absolute rotation.
        scale: Scale range ``(low, high)``.
        translate: Maximum translation as a fraction of the image side.
        flip_prob: Probability of each of a horizontal and a vertical flip.
        gamma: Gamma range applied to the [0, 1]-rescaled image.
        contrast: Multiplicative contrast range.
        noise_std: Maximum Gaussian noise std (in units of the image std).
        blur_prob: Probability of a Gaussian blur (sigma 0.5-1.0 px).
    """

    rotate_deg: float = 20.0
    scale: tuple[float, float] = (0.85, 1.15)
    translate: float = 0.08
    flip_prob: float = 0.5
    gamma: tuple[float, float] = (0.7, 1.5)
    contrast: tuple[float, float] = (0.8, 1.2)
    noise_std: float = 0.05
    blur_prob: float = 0.2


def _uniform(generator: torch.Generator, low: float, high: float) -> float:
    return low + (high - low) * float(torch.rand((), generator=generator))


def random_affine(cfg: AugmentConfig, generator: torch.Generator) -> torch.Tensor:
    """A random 2×3 matrix in normalised coordinates mapping output to input positions."""
    angle = math.radians(_uniform(generator, -cfg.rotate_deg, cfg.rotate_deg))
    scale = _uniform(generator, *cfg.scale)
    tx = _uniform(generator, -cfg.translate, cfg.translate) * 2
    ty = _uniform(generator, -cfg.translate, cfg.translate) * 2
    fx = -1.0 if float(torch.rand((), generator=generator)) < cfg.flip_prob else 1.0
    fy = -1.0 if float(torch.rand((), generator=generator)) < cfg.flip_prob else 1.0
    cos, sin = math.cos(angle) / scale, math.sin(angle) / scale
    return torch.tensor([[cos * fx, -sin * fy, tx], [sin * fx, cos * fy, ty]], dtype=torch.float32)


def warp(image: torch.Tensor, theta: torch.Tensor, mode: str) -> torch.Tensor:
    """Warps ``(C, H, W)`` with the 2×3 ``theta`` (output -> input, normalised, align_corners=False)."""
    grid = F.affine_grid(theta[None], [1, *image.shape], align_corners=False)  # (1, H, W, 2)
    out = F.grid_sample(image[None].float(), grid, mode=mode, padding_mode="zeros", align_corners=False)
    return out[0]


def warp_points(points: torch.Tensor, theta: torch.Tensor, size: tuple[int, int]) -> torch.Tensor:
    """Maps pixel points ``(K, 2)`` (x, y) through the inverse of ``theta`` (input -> output)."""
    h, w = size
    # pixel -> normalised (align_corners=False): u = (2x + 1) / W - 1
    norm = torch.stack([(2 * points[:, 0] + 1) / w - 1, (2 * points[:, 1] + 1) / h - 1], dim=-1)  # (K, 2)
    a, t = theta[:, :2], theta[:, 2]
    out = torch.linalg.solve(a, (norm - t).T).T  # (K, 2) output normalised coordinates
    return torch.stack([((out[:, 0] + 1) * w - 1) / 2, ((out[:, 1] + 1) * h - 1) / 2], dim=-1)


def intensity(image: torch.Tensor, cfg: AugmentConfig, generator: torch.Generator) -> torch.Tensor:
    """Gamma, contrast, blur and noise on a ``(C, H, W)`` image; keeps its value range roughly."""
    lo, hi = image.min(), image.max()
    span = (hi - lo).clamp_min(1e-6)
    x = ((image - lo) / span).clamp(0, 1) ** _uniform(generator, *cfg.gamma)
    x = (x - x.mean()) * _uniform(generator, *cfg.contrast) + x.mean()
    if float(torch.rand((), generator=generator)) < cfg.blur_prob:
        sigma = _uniform(generator, 0.5, 1.0)
        radius = 2
        k = torch.exp(-(torch.arange(-radius, radius + 1, dtype=torch.float32) ** 2) / (2 * sigma**2))
        k = k / k.sum()
        c = x.shape[0]
        x = F.conv2d(x[None], k.view(1, 1, 1, -1).repeat(c, 1, 1, 1), padding=(0, radius), groups=c)
        x = F.conv2d(x, k.view(1, 1, -1, 1).repeat(c, 1, 1, 1), padding=(radius, 0), groups=c)[0]
    std = float(x.std()) * _uniform(generator, 0.0, cfg.noise_std)
    x = x + std * torch.randn(x.shape, generator=generator)
    return x * span + lo


def augment_item(
    image: torch.Tensor,
    cfg: AugmentConfig,
    generator: torch.Generator,
    mask: torch.Tensor | None = None,
    points: torch.Tensor | None = None,
) -> tuple[torch.Tensor, torch.Tensor | None, torch.Tensor | None]:
    """One random spatial transform for image ``(C, H, W)``, mask ``(H, W)`` and points ``(K, 2)``.

    Intensity changes are then applied to the image only.
    """
    theta = random_affine(cfg, generator)
    size = image.shape[-2:]
    out_image = intensity(warp(image, theta, "bilinear"), cfg, generator)
    out_mask = None if mask is None else warp(mask[None].float(), theta, "nearest")[0].round().long()
    out_points = None if points is None else warp_points(points.float(), theta, size)
    return out_image, out_mask, out_points
