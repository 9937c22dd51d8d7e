"""Heart zoom: a second segmentation pass on a crop that the heart fills, mapped back to the grid.

Small structures (an LGE scar of 2-3 mL is ~20 pixels per slice at 1.5 mm) cover a fraction of
one ViT token; the decoder then draws their boundary from features a token wide. Zooming the heart
so it fills most of the crop gives each token fewer pixels of heart, at no extra compute.

The zoom box is one square per volume (the union of the heart over its slices, so every slice of a
stack is zoomed alike), centred on the heart's bounding box, its side the box's longer side over
``fill``, clipped to ``[min_side, image side]`` (never shrinking the heart, at most
``image side / min_side`` zoom). Training items are zoomed around the manual heart with a jittered
fill and centre (:class:`HeartZoomItems`); at inference the first pass finds the heart and the
second pass's class probabilities replace the first's inside the box (:func:`refine_with_zoom`).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F

from cmrfm.tasks.context import group_members
from cmrfm.tasks.mixed import RandomlyChangedItems

#: Smallest zoom-box side as a fraction of the image side (largest zoom 3x).
MIN_SIDE_FRACTION = 1 / 3
#: Training jitter: fill drawn in ``fill ± FILL_JITTER``, centre moved by up to this fraction of the side.
FILL_JITTER = 0.1
CENTRE_JITTER = 0.05


@dataclass(frozen=True)
class ZoomBox:
    """A square region of an ``(H, W)`` grid: top-left ``(y0, x0)`` and ``side``, in pixels (float)."""

    y0: float
    x0: float
    side: float


def heart_box(
    heart: np.ndarray, fill: float, centre_shift: tuple[float, float] = (0.0, 0.0)
) -> ZoomBox | None:
    """The zoom box of a heart mask ``(..., H, W)`` (bool; leading axes are slices), or None if empty.

    Args:
        heart: Where the heart is, on one or more slices of the same grid.
        fill: Fraction of the box side the heart's longer bounding-box side should take.
        centre_shift: Offset of the box centre, as fractions of its side (training jitter).
    """
    if not 0 < fill <= 1:
        raise ValueError(f"heart zoom fill must be in (0, 1], got {fill}")
    h, w = heart.shape[-2:]
    flat = heart.reshape(-1, h, w).any(axis=0)  # (H, W)
    rows, cols = np.nonzero(flat.any(axis=1))[0], np.nonzero(flat.any(axis=0))[0]
    if rows.size == 0:
        return None
    extent = max(rows[-1] - rows[0] + 1, cols[-1] - cols[0] + 1)
    side = float(np.clip(extent / fill, MIN_SIDE_FRACTION * min(h, w), min(h, w)))
    cy = (rows[0] + rows[-1] + 1) / 2 + centre_shift[0] * side
    cx = (cols[0] + cols[-1] + 1) / 2 + centre_shift[1] * side
    return ZoomBox(cy - side / 2, cx - side / 2, side)


def _sampling_grid(box: ZoomBox, size: int, height: int, width: int) -> torch.Tensor:
    """``grid_sample`` grid ``(1, size, size, 2)`` reading ``box`` of an ``(height, width)`` image."""
    steps = (torch.arange(size, dtype=torch.float32) + 0.5) * (box.side / size)  # (size,) px into the box
    ys = (box.y0 + steps) / height * 2 - 1  # pixel edges -> [-1, 1] (align_corners=False)
    xs = (box.x0 + steps) / width * 2 - 1
    gy, gx = torch.meshgrid(ys, xs, indexing="ij")  # (size, size)
    return torch.stack([gx, gy], dim=-1)[None]  # (1, size, size, 2) as (x, y)


def zoom(array: torch.Tensor, box: ZoomBox, size: int, mode: str = "bilinear") -> torch.Tensor:
    """``(N, C, H, W)`` -> ``(N, C, size, size)``: the box resampled (zeros outside the image)."""
    grid = _sampling_grid(box, size, *array.shape[-2:]).to(array.device)
    grid = grid.expand(array.shape[0], -1, -1, -1)  # (N, size, size, 2)
    return F.grid_sample(array.float(), grid, mode=mode, padding_mode="zeros", align_corners=False)


def unzoom(zoomed: torch.Tensor, box: ZoomBox, base: torch.Tensor) -> torch.Tensor:
    """Maps ``(N, C, s, s)`` maps of the box back onto ``base`` ``(N, C, H, W)`` (kept outside the box)."""
    n, _, height, width = base.shape
    ys = (torch.arange(height, dtype=torch.float32) + 0.5 - box.y0) / box.side  # (H,) box fraction
    xs = (torch.arange(width, dtype=torch.float32) + 0.5 - box.x0) / box.side
    gy, gx = torch.meshgrid(ys * 2 - 1, xs * 2 - 1, indexing="ij")  # (H, W) in the box's [-1, 1]
    grid = torch.stack([gx, gy], dim=-1)[None].expand(n, -1, -1, -1).to(zoomed.device)  # (N, H, W, 2)
    back = F.grid_sample(zoomed.float(), grid, mode="bilinear", padding_mode="border", align_corners=False)
    inside = ((gy.abs() < 1) & (gx.abs() < 1)).to(base.device)  # (H, W)
    return torch.where(inside, back.to(base.dtype), base)


def refine_with_zoom(
    predict: Callable[[torch.Tensor], torch.Tensor],
    images: torch.Tensor,
    probs: torch.Tensor,
    groups: Sequence[Any],
    fill: float,
    heart_classes: Sequence[int],
) -> torch.Tensor:
    """Second pass on the heart of each group of slices; returns the refined probabilities.

    Args:
        predict: ``(n, C_in, H, W)`` images -> ``(n, C, H, W)`` class probabilities (the model,
            with whatever test-time views the caller uses).
        images: ``(N, C_in, H, W)`` the inputs of the first pass.
        probs: ``(N, C, H, W)`` first-pass probabilities.
        groups: One key per slice; slices with the same key (a volume) share a zoom box.
        fill: Fraction of the box the heart should fill.
        heart_classes: Class indices that make up the heart (the box is drawn around their arg-max).
    """
    out = probs.clone()
    heart = np.isin(probs.argmax(dim=1).cpu().numpy(), list(heart_classes))  # (N, H, W)
    size = images.shape[-1]
    for index_list in group_members(groups):
        box = heart_box(heart[index_list], fill)
        if box is None:
            continue
        idx = torch.as_tensor(index_list)
        zoomed_probs = predict(zoom(images[idx], box, size))  # (n, C, size, size)
        out[idx] = unzoom(zoomed_probs, box, probs[idx])
    return out


class HeartZoomItems(RandomlyChangedItems):
    """Segmentation items zoomed on their volume's manual heart with probability ``prob`` (training).

    The box of each volume is drawn around the union of its heart classes over all its slices, with
    the fill drawn in ``fill ± 0.1`` and the centre moved by up to 5 % of the side; the item's
    in-plane spacing shrinks by the zoom. Randomness comes from torch's global generator (saved in
    fine-tuning checkpoints), so runs resume exactly.

    Args:
        items: Segmentation items (``image`` ``(H, W)``, ``mask`` class indices, ``volume``).
        prob: Probability that an accessed item is zoomed (the rest stay as they are, so one model
            serves both passes).
        fill: Mean fraction of the box the heart fills.
        heart_classes: Class indices of the heart in ``mask``.
    """

    def __init__(
        self, items: Sequence[dict[str, Any]], prob: float, fill: float, heart_classes: Sequence[int]
    ) -> None:
        super().__init__(items, prob)
        self.fill = float(fill)
        union: dict[str, np.ndarray] = {}
        for i in range(len(items)):
            item = items[i]
            heart = np.isin(np.asarray(item["mask"]), list(heart_classes))
            key = item["volume"]
            union[key] = heart if key not in union else union[key] | heart
        self.hearts = union

    def change(self, item: dict[str, Any], rng: np.random.Generator) -> dict[str, Any]:
        """``item`` zoomed on its volume's heart (unchanged when the volume has no heart)."""
        fill = float(np.clip(self.fill + rng.uniform(-FILL_JITTER, FILL_JITTER), 0.3, 1.0))
        shift = tuple(rng.uniform(-CENTRE_JITTER, CENTRE_JITTER, size=2))
        box = heart_box(self.hearts[item["volume"]], fill, shift)
        if box is None:
            return item
        source = np.asarray(item["image"], np.float32)
        image = torch.as_tensor(source).reshape(1, -1, *source.shape[-2:])  # (1, C, H, W)
        mask = torch.as_tensor(np.asarray(item["mask"]).astype(np.float32))[None, None]
        size = image.shape[-1]
        item["image"] = zoom(image, box, size)[0].reshape(source.shape).numpy()
        item["mask"] = (
            zoom(mask, box, size, mode="nearest")[0, 0].numpy().astype(np.asarray(item["mask"]).dtype)
        )
        spacing = np.asarray(item["spacing"], np.float32).copy()
        spacing[:2] *= box.side / size
        item["spacing"] = spacing
        return item
