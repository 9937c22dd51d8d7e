"""Item datasets shared by the tasks: in-memory 2D items with paired augmentation, and a tiny phantom.

The phantom (:func:`phantom_slice`) is a cartoon short-axis slice — LV blood pool, myocardial ring,
RV crescent, RV insertion points — used only for tests and smoke runs (``synthetic=true``); real
training uses the data adapters and the simulator.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np
import torch
from torch.utils.data import Dataset

from cmrfm.constants import Label
from cmrfm.tasks.augment import AugmentConfig, augment_item


class ItemDataset(Dataset):
    """In-memory items (dicts of numpy arrays / scalars) turned into tensors, augmented when training.

    Image-level items hold ``image`` ``(H, W)`` float and optionally ``mask`` ``(H, W)`` and
    ``landmarks`` ``(K, 2)``; study-level items hold ``images`` ``(S, H, W)`` (each image augmented
    independently). Every other key passes through unchanged.

    Args:
        items: The items.
        train: Apply augmentation.
        augment: Augmentation ranges.
        seed: Base seed; each access draws from torch's global RNG (saved in checkpoints) mixed
            with this seed.
        max_images: Study-level training items keep a random subset of at most this many images
            (in their original order); evaluation always sees every image. 0 keeps all.
    """

    def __init__(
        self,
        items: Sequence[dict[str, Any]],
        train: bool,
        augment: AugmentConfig | None = None,
        seed: int = 0,
        max_images: int = 0,
    ) -> None:
        self.items = items if isinstance(items, Sequence) else list(items)  # lazy sequences stay lazy
        self.train = train
        self.augment = augment or AugmentConfig()
        self.seed = seed
        self.max_images = max_images

    def __len__(self) -> int:
        return len(self.items)

    def _generator(self) -> torch.Generator:
        return torch.Generator().manual_seed(int(torch.randint(0, 2**62, ())) ^ self.seed)

    def __getitem__(self, index: int) -> dict[str, Any]:
        item = dict(self.items[index])
        g = self._generator() if self.train else None
        if "images" in item:
            images = torch.as_tensor(np.asarray(item["images"], np.float32))[:, None]  # (S, 1, H, W)
            if g is not None and 0 < self.max_images < len(images):
                keep = torch.randperm(len(images), generator=g)[: self.max_images].sort().values
                images = images[keep]
            if g is not None:
                images = torch.stack([augment_item(im, self.augment, g)[0] for im in images])
            item["images"] = images
            return _tensors(item)
        image = torch.as_tensor(np.asarray(item["image"], np.float32))
        image = image[None] if image.ndim == 2 else image  # (C, H, W): 1 channel, or a slice and neighbours
        mask = torch.as_tensor(np.asarray(item["mask"], np.int64)) if "mask" in item else None
        points = torch.as_tensor(np.asarray(item["landmarks"], np.float32)) if "landmarks" in item else None
        if g is not None:
            image, mask, points = augment_item(image, self.augment, g, mask, points)
        item["image"] = image
        if mask is not None:
            item["mask"] = mask
        if points is not None:
            h, w = image.shape[-2:]
            inside = (
                (points[:, 0] >= 0) & (points[:, 0] <= w - 1) & (points[:, 1] >= 0) & (points[:, 1] <= h - 1)
            )
            valid = torch.as_tensor(np.asarray(item.get("landmark_valid", np.ones(len(points), bool))))
            item["landmarks"] = points
            item["landmark_valid"] = valid & inside
        return _tensors(item)


def _tensors(item: dict[str, Any]) -> dict[str, Any]:
    for key, value in item.items():
        if isinstance(value, np.ndarray):
            item[key] = torch.as_tensor(value)
    return item


def phantom_slice(
    rng: np.random.Generator, size: int = 32, lv_radius: float | None = None, wall: float | None = None
) -> dict[str, Any]:
    """A cartoon SAX slice: ``image`` (H, W), ``mask`` (internal labels), RV insertion ``landmarks`` (2, 2).

    Args:
        rng: Random generator (position, radii, intensities, noise).
        size: Image side in pixels.
        lv_radius: LV cavity radius in pixels (random when ``None``).
        wall: Myocardial thickness in pixels (random when ``None``).
    """
    ys, xs = np.mgrid[0:size, 0:size].astype(np.float32)
    cx = size / 2 + rng.uniform(-2, 2)
    cy = size / 2 + rng.uniform(-2, 2)
    r_lv = lv_radius if lv_radius is not None else rng.uniform(0.12, 0.2) * size
    r_epi = r_lv + (wall if wall is not None else rng.uniform(0.05, 0.09) * size)
    d = np.hypot(xs - cx, ys - cy)
    mask = np.zeros((size, size), np.uint8)
    # RV: a disc to the image left of the LV, minus the LV epicardium (a crescent on the septum).
    rv_c = (cx - r_epi * 1.2, cy)
    d_rv = np.hypot(xs - rv_c[0], ys - rv_c[1])
    mask[(d_rv < r_epi * 1.1) & (d >= r_epi)] = Label.RV
    mask[(d >= r_lv) & (d < r_epi)] = Label.MYO
    mask[d < r_lv] = Label.LV
    intensity = {Label.LV: 0.9, Label.MYO: 0.3, Label.RV: 0.8}
    image = np.full((size, size), 0.15, np.float32)
    for label, value in intensity.items():
        image[mask == label] = value + rng.normal(0, 0.03)
    image += rng.normal(0, 0.05, image.shape).astype(np.float32)
    # RV insertion points: where the RV circle meets the epicardium (two intersection points).
    dx = rv_c[0] - cx
    a = (r_epi**2 - (r_epi * 1.1) ** 2 + dx**2) / (2 * dx)
    h = np.sqrt(max(r_epi**2 - a**2, 0.0))
    sign = np.sign(dx)
    landmarks = np.array([[cx + sign * abs(a), cy - h], [cx + sign * abs(a), cy + h]], np.float32)
    return {"image": image, "mask": mask, "landmarks": landmarks}
