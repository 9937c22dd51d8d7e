"""Optimiser helpers shared by pretraining and fine-tuning.

* :func:`param_groups`: AdamW groups with no weight decay on biases, norms and embeddings, and optional
  layer-wise lr decay (``lr_scale = decay ** (num_layers + 1 - layer_id)``) for fine-tuning a backbone.
* :func:`cosine_schedule`: per-step values with linear warm-up then cosine decay (lr, weight decay,
  EMA momentum, teacher temperature, ...).
* :class:`ScheduledOptimizer`-style helper :func:`apply_schedules` sets each group's lr and weight
  decay for a step from the schedules and the group's scale factors.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterable
from dataclasses import dataclass

import numpy as np
import torch
from torch import nn


@dataclass
class OptimConfig:
    """AdamW and schedule settings (shared by pretraining and fine-tuning configs).

    Attributes:
        lr: Peak learning rate (reached after warm-up) for a batch of ``lr_ref_batch`` images.
        lr_ref_batch: The lr scales linearly with the global batch relative to this (0 disables).
        min_lr: Final learning rate of the cosine decay.
        warmup_steps: Linear warm-up steps from 0 to ``lr``.
        weight_decay: Initial weight decay.
        weight_decay_end: Final weight decay (cosine schedule, DINO habit).
        betas: AdamW betas.
        eps: AdamW epsilon.
        grad_clip: Global gradient-norm clip (0 disables).
        layer_decay: Layer-wise lr decay factor (1.0 disables; fine-tuning uses ~0.65-0.75).
    """

    lr: float = 5e-4
    lr_ref_batch: int = 256
    min_lr: float = 1e-6
    warmup_steps: int = 100
    weight_decay: float = 0.04
    weight_decay_end: float = 0.4
    betas: tuple[float, float] = (0.9, 0.999)
    eps: float = 1e-8
    grad_clip: float = 3.0
    layer_decay: float = 1.0


def cosine_schedule(start: float, end: float, total_steps: int, warmup_steps: int = 0) -> np.ndarray:
    """Per-step values: linear warm-up from 0 to ``start``, then cosine from ``start`` to ``end``.

    Returns:
        Array of length ``max(total_steps, 1)``.
    """
    total_steps = max(int(total_steps), 1)
    warmup_steps = min(max(int(warmup_steps), 0), total_steps)
    warm = np.linspace(0.0, start, warmup_steps, endpoint=False) if warmup_steps else np.array([])
    rest = total_steps - warmup_steps
    t = np.arange(rest)
    cos = end + 0.5 * (start - end) * (1 + np.cos(math.pi * t / max(rest, 1)))
    return np.concatenate([warm, cos]).astype(np.float64)


def _is_no_decay(name: str, param: torch.Tensor, skip: set[str]) -> bool:
    leaf = name.split(".")[-1]
    return param.ndim <= 1 or name in skip or leaf in skip or name.endswith(".bias")


def param_groups(
    model: nn.Module,
    weight_decay: float,
    layer_decay: float = 1.0,
    no_weight_decay: Iterable[str] = (),
    layer_id: Callable[[str], int] | None = None,
    num_layers: int | None = None,
    prefix_to_strip: str = "",
) -> list[dict]:
    """AdamW parameter groups with weight-decay exemptions and optional layer-wise lr decay.

    Each group carries ``lr_scale`` and ``wd_scale`` (0 for exempt parameters), which
    :func:`apply_schedules` multiplies into the scheduled lr and weight decay.

    Args:
        model: The module whose trainable parameters are grouped.
        weight_decay: Initial weight decay (overwritten each step by :func:`apply_schedules`).
        layer_decay: lr factor per layer below the top (1.0 disables).
        no_weight_decay: Extra parameter names (full or leaf) exempt from decay.
        layer_id: Maps a parameter name (after stripping ``prefix_to_strip``) to its depth; needed when
            ``layer_decay != 1``. Names it does not recognise should map to the top layer.
        num_layers: Depth of the top layer (``layer_id`` values lie in ``[0, num_layers + 1]``).
        prefix_to_strip: Prefix removed from names before ``layer_id``/exemption lookup (e.g.
            ``"backbone."``); parameters without it are treated as top-layer head parameters.
    """
    skip = set(no_weight_decay)
    groups: dict[tuple[int, bool], dict] = {}
    for name, param in model.named_parameters():
        if not param.requires_grad:
            continue
        local = name[len(prefix_to_strip) :] if prefix_to_strip and name.startswith(prefix_to_strip) else name
        in_backbone = not prefix_to_strip or name.startswith(prefix_to_strip)
        exempt = _is_no_decay(local if in_backbone else name, param, skip if in_backbone else set())
        if layer_decay != 1.0 and layer_id is not None and num_layers is not None and in_backbone:
            depth = layer_id(local)
            scale = layer_decay ** (num_layers + 1 - depth)
        else:
            depth = (num_layers or 0) + 1
            scale = 1.0
        key = (depth, exempt)
        if key not in groups:
            groups[key] = {
                "params": [],
                "names": [],
                "weight_decay": 0.0 if exempt else weight_decay,
                "lr_scale": scale,
                "wd_scale": 0.0 if exempt else 1.0,
            }
        groups[key]["params"].append(param)
        groups[key]["names"].append(name)
    return list(groups.values())


def build_adamw(groups: list[dict], cfg: OptimConfig, fused: bool | None = None) -> torch.optim.AdamW:
    """AdamW over ``groups`` (names are kept in each group for inspection)."""
    kwargs = {"lr": cfg.lr, "betas": tuple(cfg.betas), "eps": cfg.eps}
    if fused is not None:
        kwargs["fused"] = fused
    return torch.optim.AdamW(groups, **kwargs)


def apply_schedules(optimizer: torch.optim.Optimizer, lr: float, weight_decay: float) -> None:
    """Sets each group's lr and weight decay for this step from the scheduled values and its scales."""
    for group in optimizer.param_groups:
        group["lr"] = lr * group.get("lr_scale", 1.0)
        group["weight_decay"] = weight_decay * group.get("wd_scale", 1.0)


def clip_gradients(parameters: Iterable[torch.Tensor], max_norm: float) -> float:
    """Clips the global gradient norm to ``max_norm`` (0 disables) and returns the norm before clipping."""
    params = [p for p in parameters if p.grad is not None]
    if not params:
        return 0.0
    if max_norm > 0:
        return float(torch.nn.utils.clip_grad_norm_(params, max_norm))
    norms = torch.stack([p.grad.detach().norm() for p in params])
    return float(norms.norm())
