"""Helpers for tasks that mix sources: lazy item lists, real caches at a task's size, even spreads."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

import numpy as np
import torch

from cmrfm.constants import DEFAULT_IMAGE_SIZE
from cmrfm.data.cache import PreparedCache
from cmrfm.tasks.sources import prepared_cache

ItemMaker = Callable[[], dict[str, Any]]


class LazyItems(Sequence[dict[str, Any]]):
    """A sequence of items built on access (cache reads, k-space corruption) from zero-argument makers."""

    def __init__(self, makers: Sequence[ItemMaker]) -> None:
        self.makers = list(makers)

    def __len__(self) -> int:
        return len(self.makers)

    def __getitem__(self, index: int) -> dict[str, Any]:  # type: ignore[override]
        return self.makers[index]()


class ChainItems(Sequence[dict[str, Any]]):
    """Several item sequences read as one (e.g. real cache items followed by simulated ones)."""

    def __init__(self, parts: Sequence[Sequence[dict[str, Any]]]) -> None:
        self.parts = [p for p in parts if len(p)]
        self.offsets = np.cumsum([0, *(len(p) for p in self.parts)])

    def __len__(self) -> int:
        return int(self.offsets[-1])

    def __getitem__(self, index: int) -> dict[str, Any]:  # type: ignore[override]
        if not -len(self) <= index < len(self):
            raise IndexError(index)
        index %= len(self)
        part = int(np.searchsorted(self.offsets, index, side="right")) - 1
        return self.parts[part][index - int(self.offsets[part])]


class RandomlyChangedItems(Sequence[dict[str, Any]]):
    """Items changed on access, with probability ``prob``, by :meth:`change` (training augmentations).

    Randomness comes from torch's global generator (saved in fine-tuning checkpoints), so runs
    resume exactly.
    """

    def __init__(self, items: Sequence[dict[str, Any]], prob: float) -> None:
        self.items = items
        self.prob = float(prob)

    def __len__(self) -> int:
        return len(self.items)

    def __getitem__(self, index: int) -> dict[str, Any]:  # type: ignore[override]
        item = dict(self.items[index])
        rng = np.random.default_rng(int(torch.randint(0, 2**62, ())))
        if rng.random() >= self.prob:
            return item
        return self.change(item, rng)

    def change(self, item: dict[str, Any], rng: np.random.Generator) -> dict[str, Any]:
        """The changed copy of ``item``."""
        raise NotImplementedError


class OversampledItems(Sequence[dict[str, Any]]):
    """Items with the chosen ones repeated (e.g. slices holding scar), so an epoch sees them more.

    Args:
        items: The items.
        chosen: Positions in ``items`` to repeat.
        repeats: How often each chosen item appears in all (1 = as given).
    """

    def __init__(self, items: Sequence[dict[str, Any]], chosen: Sequence[int], repeats: int) -> None:
        if repeats < 1:
            raise ValueError(f"repeats must be >= 1, got {repeats}")
        self.items = items
        self.index = list(range(len(items))) + [int(i) for i in chosen] * (repeats - 1)

    def __len__(self) -> int:
        return len(self.index)

    def __getitem__(self, index: int) -> dict[str, Any]:  # type: ignore[override]
        return self.items[self.index[index]]


def real_cache(name: str, root: str, cache: str, size: int, extra: Sequence[str] = ()) -> PreparedCache:
    """A prepared cache of dataset ``name`` at ``size`` pixels (the default cache when size is default).

    Only non-default settings are passed on, so tasks share the cache the other tasks already made.
    """
    overrides = list(extra)
    if size != DEFAULT_IMAGE_SIZE:
        overrides.append(f"size={size}")
    return prepared_cache(name, root, cache, overrides)


def spread(indices: Sequence[int], count: int) -> list[int]:
    """At most ``count`` of ``indices``, evenly spread (all of them when ``count`` <= 0)."""
    indices = list(indices)
    if count <= 0 or len(indices) <= count:
        return indices
    picks = np.linspace(0, len(indices) - 1, count).round().astype(int)
    return [indices[i] for i in dict.fromkeys(picks.tolist())]


def by_study(cache: PreparedCache) -> dict[str, list[int]]:
    """Positions of each study's items in a cache view, in cache order."""
    out: dict[str, list[int]] = {}
    for position, row in enumerate(cache.rows):
        out.setdefault(row["study"], []).append(position)
    return out


def real_slices(
    name: str,
    root: str,
    cache: str,
    size: int,
    per_subject: int,
    extra: Sequence[str] = (),
    **where: Any,
) -> tuple[PreparedCache, dict[str, list[int]]]:
    """A real dataset's cache view (filtered by ``where``) and up to ``per_subject`` positions per study."""
    view = real_cache(name, root, cache, size, extra)
    if where:
        view = view.filter(**where)
    return view, {study: spread(pos, per_subject) for study, pos in by_study(view).items()}


def subject_factory(
    by_subject: dict[str, list[ItemMaker]], make: Callable[[Sequence[ItemMaker], bool], Any]
) -> Callable[[Sequence[str], bool], Any]:
    """``make_dataset`` over per-subject item makers: ``make(makers, train)`` builds the dataset."""

    def factory(ids: Sequence[str], train: bool) -> Any:
        return make(LazyItems([m for s in ids for m in by_subject.get(s, [])]), train)

    return factory
