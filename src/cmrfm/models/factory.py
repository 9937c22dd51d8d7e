"""Backbone registry, building from a name or config, and loading/saving weights with a model card.

A model card is a JSON dict; its ``architecture`` entry (``{"name": "vit", "config": {...}}``) is what
:func:`load_backbone` rebuilds. Other entries (objective, data, steps, probe results, version) describe
how the weights were made.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

import torch
from torch import nn

from cmrfm import __version__
from cmrfm.errors import ConfigError, InputError
from cmrfm.models.vit import PRESETS, VisionTransformer, ViTConfig, resize_pos_embed, vit_config
from cmrfm.registry import Registry

#: Backbone family name -> constructor taking a config dataclass.
MODELS: Registry[Callable[[Any], nn.Module]] = Registry("backbone")

#: Backbone family used for preset names.
VIT = "vit"


@MODELS.register(VIT)
def _build_vit(cfg: ViTConfig) -> VisionTransformer:
    return VisionTransformer(cfg)


def build_backbone(name_or_cfg: str | ViTConfig, **overrides: Any) -> VisionTransformer:
    """Builds a backbone from a preset name (``"tiny"``, ``"small"``, ``"base"``) or a :class:`ViTConfig`."""
    if isinstance(name_or_cfg, ViTConfig):
        cfg = ViTConfig.from_dict({**name_or_cfg.to_dict(), **overrides}) if overrides else name_or_cfg
    elif name_or_cfg in PRESETS:
        cfg = vit_config(name_or_cfg, **overrides)
    else:
        raise ConfigError(f"unknown backbone {name_or_cfg!r}; choose one of: {', '.join(PRESETS)}")
    return MODELS.get(VIT)(cfg)


def architecture(cfg: ViTConfig) -> dict[str, Any]:
    """The card's ``architecture`` entry for ``cfg``."""
    return {"name": VIT, "config": cfg.to_dict()}


def make_card(cfg: ViTConfig, **fields: Any) -> dict[str, Any]:
    """A model card for a backbone: architecture, cmrfm version, and any extra ``fields``."""
    return {
        "format": "cmrfm-backbone/1",
        "cmrfm_version": __version__,
        "architecture": architecture(cfg),
        **fields,
    }


def save_backbone(
    model: VisionTransformer, path: str | Path, card: Mapping[str, Any] | None = None, fp16: bool = False
) -> Path:
    """Writes a backbone's weights (safetensors) and card (JSON beside it and embedded)."""
    from cmrfm.engine.checkpoint import save_weights

    full = make_card(model.cfg, **({} if card is None else {k: v for k, v in card.items()}))
    full["architecture"] = architecture(model.cfg)
    full["dtype"] = "float16" if fp16 else "float32"
    return save_weights(model.state_dict(), path, full, fp16=fp16)


def check_architecture(card: Mapping[str, Any], expected: ViTConfig | None, source: str | Path) -> ViTConfig:
    """Reads the architecture from ``card``; if ``expected`` is given, errors when they differ.

    Raises:
        InputError: The card has no readable architecture, or it differs from ``expected``.
    """
    arch = card.get("architecture")
    if not isinstance(arch, Mapping) or arch.get("name") != VIT or "config" not in arch:
        raise InputError(source, f"model card has no {VIT!r} architecture entry (got {arch!r})")
    try:
        cfg = ViTConfig.from_dict(dict(arch["config"]))
    except (ConfigError, TypeError) as err:
        raise InputError(source, f"model card architecture is not readable: {err}") from None
    if expected is not None:
        mine, theirs = _shape_keys(expected), _shape_keys(cfg)
        diff = {k: (theirs[k], mine[k]) for k in mine if mine[k] != theirs[k]}
        if diff:
            detail = ", ".join(f"{k}: file has {a}, expected {b}" for k, (a, b) in diff.items())
            raise InputError(source, f"weights are for another architecture ({detail})")
    return cfg


def _shape_keys(cfg: ViTConfig) -> dict[str, Any]:
    """The config entries that decide parameter shapes."""
    keys = ("patch_size", "in_chans", "embed_dim", "depth", "num_heads", "mlp_ratio", "qkv_bias")
    out = {k: getattr(cfg, k) for k in keys}
    out["layer_scale"] = cfg.layer_scale_init is not None
    return out


def load_backbone(
    path: str | Path, expected: ViTConfig | None = None, **overrides: Any
) -> tuple[VisionTransformer, dict[str, Any]]:
    """Loads a backbone and its card from a safetensors file written by :func:`save_backbone`.

    Args:
        path: The ``.safetensors`` file (its card is the ``.json`` beside it, else embedded metadata).
        expected: If given, the architecture the caller needs; other weights raise a clear error.
        **overrides: Non-shape config changes for the rebuilt model (e.g. ``drop_path_rate=0.1``,
            ``grad_checkpointing=True``, ``attention="sdpa"``). ``img_size`` may change too: the
            learned position embeddings are resized bicubically to the new grid. (Without it, the
            model still runs at any size divisible by the patch size, resizing on the fly.)

    Returns:
        The model (float32, eval mode) and the card.
    """
    from cmrfm.engine.checkpoint import load_float_state, load_weights

    tensors, card = load_weights(path)
    cfg = check_architecture(card, expected, path)
    if overrides:
        cfg = ViTConfig.from_dict({**cfg.to_dict(), **overrides})
    model = build_backbone(cfg)
    state = {k: v.float() if v.is_floating_point() else v for k, v in tensors.items()}
    src_grid = (int(card["architecture"]["config"]["img_size"]) // cfg.patch_size,) * 2
    if "pos_embed" in state and src_grid != model.grid:
        pos = state["pos_embed"]  # (1, 1 + h·w, D)
        patches = resize_pos_embed(pos[:, 1:], src_grid, model.grid)  # (1, h'·w', D)
        state["pos_embed"] = torch.cat([pos[:, :1], patches], dim=1)
    load_float_state(model, state, path, f"the {VIT} architecture in the card")
    model.eval()
    return model, card


__all__ = [
    "MODELS",
    "build_backbone",
    "check_architecture",
    "load_backbone",
    "make_card",
    "save_backbone",
]
