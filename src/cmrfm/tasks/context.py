"""Through-plane context (2.5D): a slice and its neighbours in the stack as input channels.

A 2D model reads one slice at a time; a scar that is clear on one slice and faint on the next is
decided on each alone. With ``context`` neighbours each side, the input of slice ``z`` is the
``2·context + 1`` slices ``z - context .. z + context`` of its volume (the stack's end slices
repeated past its ends), the slice itself in the middle channel. A 2D model grows into one by
:func:`expand_input_channels`, in one of two ways (:data:`CHANNEL_INITS`):

* ``zero``: the new channels start with zero weights, so before any training the grown model gives
  exactly the 2D model's output. Their gradients are small at zero, and the patch embedding is the
  layer layer-wise lr decay slows most: on EMIDEC the neighbour weights stayed near zero.
* ``inflate``: every channel gets the 2D weight divided by the channel count (as 2D filters are
  inflated to 3D), so the model starts from the through-plane mean and must learn to tell the
  slices apart; on a stack of identical slices it still gives the 2D output.
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Sequence
from typing import Any

import numpy as np
import torch
from torch import nn


def neighbour_indices(order: Sequence[int], context: int) -> list[list[int]]:
    """For positions ``order`` (a volume's items sorted by slice), the items of each one's channels.

    Returns one list of ``2·context + 1`` entries of ``order`` per position, its own in the middle.
    """
    n = len(order)
    return [[order[min(max(i + d, 0), n - 1)] for d in range(-context, context + 1)] for i in range(n)]


def group_members(groups: Sequence[Any]) -> list[list[int]]:
    """Positions of each distinct key of ``groups`` (one key per slice naming its volume), in order."""
    members: dict[Any, list[int]] = defaultdict(list)
    for index, key in enumerate(groups):
        members[key].append(index)
    return list(members.values())


def stack_with_neighbours(images: np.ndarray, groups: Sequence[Any], context: int) -> np.ndarray:
    """``(N, H, W)`` slices -> ``(N, 2·context + 1, H, W)``; slices of one group are one volume, in order."""
    out = np.empty((len(images), 2 * context + 1, *images.shape[1:]), dtype=images.dtype)
    for order in group_members(groups):
        for own, picks in zip(order, neighbour_indices(order, context), strict=True):
            out[own] = images[picks]
    return out


class ContextItems(Sequence[dict[str, Any]]):
    """Segmentation items whose ``image`` becomes ``(2·context + 1, H, W)``: the slice and its neighbours.

    Neighbours are the items of the same ``volume``, ordered by ``slice``. Labels stay the centre
    slice's.

    Args:
        items: Image-level items (``image`` ``(H, W)``, ``volume``, ``slice``).
        context: Neighbours each side (≥ 1).
    """

    def __init__(self, items: Sequence[dict[str, Any]], context: int) -> None:
        if context < 1:
            raise ValueError(f"context must be >= 1, got {context}")
        self.items = items
        by_volume: dict[str, list[tuple[int, int]]] = defaultdict(list)
        for index in range(len(items)):
            item = items[index]
            by_volume[item["volume"]].append((int(item["slice"]), index))
        self.channels: dict[int, list[int]] = {}
        for entries in by_volume.values():
            order = [index for _, index in sorted(entries)]
            for own, picks in zip(order, neighbour_indices(order, context), strict=True):
                self.channels[own] = picks

    def __len__(self) -> int:
        return len(self.items)

    def __getitem__(self, index: int) -> dict[str, Any]:  # type: ignore[override]
        item = dict(self.items[index])
        picks = self.channels[index]
        item["image"] = np.stack(
            [np.asarray(item["image"] if i == index else self.items[i]["image"], np.float32) for i in picks]
        )  # (2·context + 1, H, W)
        return item


#: How a 1-channel weight grows to several input channels.
CHANNEL_INITS = ("zero", "inflate")


def _check_init(init: str) -> None:
    if init not in CHANNEL_INITS:
        raise ValueError(f"channel init must be one of {CHANNEL_INITS}, got {init!r}")


def expand_channel_weight(source: torch.Tensor, channels: int, init: str = "zero") -> torch.Tensor:
    """A ``(O, 1, ...)`` weight -> ``(O, channels, ...)`` (``zero``: source in the middle channel)."""
    _check_init(init)
    if init == "inflate":
        return source.expand(source.shape[0], channels, *source.shape[2:]) / channels
    out = source.new_zeros((source.shape[0], channels, *source.shape[2:]))
    out[:, channels // 2] = source[:, 0]
    return out


def expand_patch_embed(weight: torch.Tensor, channels: int, init: str = "zero") -> torch.Tensor:
    """A ``(D, p·p)`` patch projection of 1-channel images -> ``(D, channels·p·p)`` (channel-major)."""
    d, pp = weight.shape
    return expand_channel_weight(weight[:, None], channels, init).reshape(d, channels * pp)


def expand_image_convs(
    source: dict[str, torch.Tensor], own: dict[str, torch.Tensor], channels: int, init: str = "zero"
) -> dict[str, torch.Tensor]:
    """``source`` head tensors with its 1-channel image convolutions grown to ``own``'s ``channels``."""
    out = dict(source)
    for key, tensor in source.items():
        if key in own and tensor.ndim == 4 and tensor.shape[1] == 1 and own[key].shape[1] == channels > 1:
            out[key] = expand_channel_weight(tensor, channels, init)
    return out


def expand_input_channels(backbone: nn.Module, channels: int, init: str = "zero") -> nn.Module:
    """A copy of a 1-channel ViT taking ``channels`` input channels (grown as ``init`` says)."""
    from cmrfm.models.factory import build_backbone

    if backbone.cfg.in_chans == channels:
        return backbone
    if backbone.cfg.in_chans != 1:
        raise ValueError(f"can only expand a 1-channel backbone, this one has {backbone.cfg.in_chans}")
    grown = build_backbone(backbone.cfg, in_chans=channels)
    state = dict(backbone.state_dict())
    state["patch_embed.proj.weight"] = expand_patch_embed(state["patch_embed.proj.weight"], channels, init)
    grown.load_state_dict(state)
    return grown
