"""The pretraining image mixture: endless, deterministic, resumable streams from several sources.

Every source yields 2D float32 images in [0, 1] and has a small ``state_dict`` (its position). The
mixture picks the source of each sample from ``(seed, rank, step)`` with the configured weights, so a
batch depends only on the step and the sources' positions: saving those positions in a checkpoint is
enough to resume exactly. Labels of labelled sources are ignored.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Protocol

import numpy as np
import torch
import torch.nn.functional as F

from cmrfm.data.shards import ShardDataset, ShardStream, rescale_unit
from cmrfm.errors import ConfigError, InputError
from cmrfm.pretrain.config import DataConfig, SourceConfig

#: Number of classes of the synthetic phantom set (used by the synthetic probe).
PHANTOM_CLASSES = ("normal", "dilated", "hypertrophic", "rv_dilated")


class ImageSource(Protocol):
    """What the mixture needs from a source."""

    name: str

    def __next__(self) -> np.ndarray:
        """The next image, (H, W) float32 in [0, 1]."""
        ...

    def state_dict(self) -> dict[str, Any]:
        """The source's position."""
        ...

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Jumps to a saved position."""
        ...


def phantom(rng: np.random.Generator, size: int, cls: int | None = None) -> tuple[np.ndarray, int]:
    """A crude heart-centred short-axis phantom (LV pool, myocardium, RV) with noise and bias field.

    Args:
        rng: Random generator.
        size: Image side in pixels.
        cls: Index into :data:`PHANTOM_CLASSES` (random when ``None``); it sets cavity size, wall
            thickness and RV size, so a k-NN probe on features can separate the classes.

    Returns:
        The image (size, size) float32 in [0, 1] and its class.
    """
    cls = int(rng.integers(len(PHANTOM_CLASSES))) if cls is None else cls
    radius = {0: 0.16, 1: 0.24, 2: 0.11, 3: 0.16}[cls] * size * rng.uniform(0.9, 1.1)
    wall = {0: 0.06, 1: 0.04, 2: 0.11, 3: 0.06}[cls] * size * rng.uniform(0.85, 1.15)
    rv_scale = 1.8 if cls == 3 else 1.1
    yy, xx = np.mgrid[0:size, 0:size].astype(np.float32)
    cy, cx = size / 2 + rng.normal(0, size * 0.03, 2)
    ecc = rng.uniform(0.85, 1.15)
    r = np.hypot((yy - cy) * ecc, (xx - cx) / ecc)
    img = 0.15 + 0.1 * rng.random() + 0.05 * np.sin(xx / size * rng.uniform(2, 6) + rng.uniform(0, 6))
    angle = rng.uniform(0, 2 * np.pi)
    rv_cx, rv_cy = cx + np.cos(angle) * (radius + wall) * 1.2, cy + np.sin(angle) * (radius + wall) * 1.2
    r_rv = np.hypot(yy - rv_cy, xx - rv_cx)
    img = np.where(r_rv < radius * rv_scale, 0.8, img)
    img = np.where(r < radius + wall, 0.3, img)  # myocardium
    img = np.where(r < radius, 0.9, img)  # LV blood pool
    img = img + rng.normal(0, 0.04, img.shape)
    return np.clip(img, 0, 1).astype(np.float32), cls


class SyntheticSource:
    """Procedural phantoms: image ``i`` of rank ``r`` is a pure function of (seed, r, i mod ``n``)."""

    def __init__(self, size: int, n: int, seed: int, rank: int, name: str = "synthetic") -> None:
        self.size, self.n, self.seed, self.rank, self.name = size, max(1, n), seed, rank, name
        self.position = 0

    def __next__(self) -> np.ndarray:
        rng = np.random.default_rng([self.seed, self.rank, self.position % self.n])
        self.position += 1
        return phantom(rng, self.size)[0]

    def state_dict(self) -> dict[str, Any]:  # noqa: D102 (see ImageSource)
        return {"position": self.position}

    def load_state_dict(self, state: dict[str, Any]) -> None:  # noqa: D102 (see ImageSource)
        self.position = int(state["position"])


class ShardSource:
    """A shard folder streamed by :class:`~cmrfm.data.shards.ShardStream`."""

    def __init__(self, path: str | Path, seed: int, rank: int, world: int, cache: int, name: str) -> None:
        self.stream = ShardStream(
            ShardDataset(path, cache_shards=cache), seed=seed, rank=rank, world_size=world
        )
        self.name = name

    def __next__(self) -> np.ndarray:
        return next(self.stream)

    def state_dict(self) -> dict[str, Any]:  # noqa: D102 (see ImageSource)
        return self.stream.state_dict()

    def load_state_dict(self, state: dict[str, Any]) -> None:  # noqa: D102 (see ImageSource)
        self.stream.load_state_dict(state)


class CacheSource:
    """A prepared cache (``cmrfm data prepare``), shuffled per epoch, split across ranks, labels ignored."""

    def __init__(self, path: str | Path, seed: int, rank: int, world: int, name: str) -> None:
        from cmrfm.data.cache import PreparedCache

        self.cache = PreparedCache(path)
        if len(self.cache) == 0:
            raise InputError(path, "prepared cache holds no images")
        self.seed, self.rank, self.world, self.name = seed, rank, world, name
        self.epoch, self.offset = 0, 0
        self._order: np.ndarray | None = None

    def _epoch_order(self) -> np.ndarray:
        if self._order is None:
            perm = np.random.default_rng([self.seed, self.epoch]).permutation(len(self.cache))
            mine = perm[self.rank :: self.world] if len(perm) >= self.world else perm
            self._order = mine
        return self._order

    def __next__(self) -> np.ndarray:
        order = self._epoch_order()
        if self.offset >= len(order):
            self.epoch, self.offset, self._order = self.epoch + 1, 0, None
            order = self._epoch_order()
        item = self.cache[int(order[self.offset])]
        self.offset += 1
        return rescale_unit(item["image"])

    def state_dict(self) -> dict[str, Any]:  # noqa: D102 (see ImageSource)
        return {"epoch": self.epoch, "offset": self.offset}

    def load_state_dict(self, state: dict[str, Any]) -> None:  # noqa: D102 (see ImageSource)
        self.epoch, self.offset, self._order = int(state["epoch"]), int(state["offset"]), None


class SimulatorSource:
    """The CMR simulator on the fly: item ``i`` of rank ``r`` is a pure function of (seed, r, i).

    Subjects are simulated one at a time (``items_per_subject`` 2D items each: cine SAX/LAX frames,
    LGE, T1/T2 maps as the simulator's defaults draw them); only the current subject is in memory.
    """

    def __init__(
        self,
        seed: int,
        rank: int,
        items_per_subject: int,
        overrides: dict[str, Any] | None = None,
        name: str = "simulator",
    ) -> None:
        from cmrfm.config import merge_into
        from cmrfm.simulate import SimConfig, SimulatedSliceDataset

        config = merge_into(SimConfig(), overrides or {}, prefix="data.simulator.")
        self.dataset = SimulatedSliceDataset(config, seed=seed, items_per_subject=items_per_subject)
        self.rank, self.per_subject, self.name = rank, items_per_subject, name
        self.position = 0
        self._subject: int | None = None
        self._items: list[np.ndarray] = []

    def __next__(self) -> np.ndarray:
        k, j = divmod(self.position, self.per_subject)
        if self._subject != k:
            seed = self.dataset.subject_seed(self.rank, k)
            items = self.dataset.subject_items(seed, self.per_subject)
            self._items = [rescale_unit(item["image"].T) for item in items]  # (Y, X)
            self._subject = k
        self.position += 1
        return self._items[j]

    def state_dict(self) -> dict[str, Any]:  # noqa: D102 (see ImageSource)
        return {"position": self.position}

    def load_state_dict(self, state: dict[str, Any]) -> None:  # noqa: D102 (see ImageSource)
        self.position = int(state["position"])


def build_source(cfg: SourceConfig, data: DataConfig, seed: int, rank: int, world: int) -> ImageSource:
    """Instantiates one configured source for this rank."""
    name = cfg.name or (f"{cfg.kind}:{Path(cfg.path).name}" if cfg.path else cfg.kind)
    if cfg.kind in ("shards", "cache") and not cfg.path:
        raise ConfigError(f"data source {name!r} of kind {cfg.kind!r} needs a path")
    if cfg.kind == "shards":
        return ShardSource(cfg.path, seed, rank, world, data.cache_shards, name)
    if cfg.kind == "cache":
        return CacheSource(cfg.path, seed, rank, world, name)
    if cfg.kind == "simulator":
        return SimulatorSource(seed, rank, data.simulator_items_per_subject, data.simulator, name)
    if cfg.kind == "synthetic":
        return SyntheticSource(data.image_size, data.synthetic_images, seed, rank, name)
    raise ConfigError(f"unknown data source kind {cfg.kind!r}")


def to_square(image: np.ndarray, size: int) -> torch.Tensor:
    """Centre-crops a 2D image to a square and resizes it to (1, size, size) (area-preserving)."""
    h, w = image.shape
    side = min(h, w)
    top, left = (h - side) // 2, (w - side) // 2
    t = torch.from_numpy(np.ascontiguousarray(image[top : top + side, left : left + side]))
    t = t[None, None].float()  # (1, 1, S, S)
    if side != size:
        t = F.interpolate(t, size=(size, size), mode="bilinear", antialias=side > size, align_corners=False)
    return t[0]


class Mixture:
    """Weighted mixture of sources producing batches (B, 1, S, S) for a step.

    Args:
        data: Data settings.
        seed: Run seed.
        rank: This process's rank.
        world: Number of processes.
    """

    def __init__(self, data: DataConfig, seed: int, rank: int = 0, world: int = 1) -> None:
        if not data.sources:
            raise ConfigError("data.sources is empty: give at least one source")
        weights = np.array([s.weight for s in data.sources], dtype=np.float64)
        if (weights < 0).any() or weights.sum() <= 0:
            raise ConfigError(f"data source weights must be >= 0 with a positive sum, got {weights.tolist()}")
        self.data, self.seed, self.rank = data, seed, rank
        self.sources = [build_source(s, data, seed, rank, world) for s in data.sources]
        self.probs = weights / weights.sum()

    def batch(self, step: int, batch_size: int) -> torch.Tensor:
        """The batch of ``step`` for this rank: (B, 1, S, S) float32 in [0, 1]."""
        rng = np.random.default_rng([self.seed, self.rank, step, 7])
        picks = rng.choice(len(self.sources), size=batch_size, p=self.probs)
        images = [to_square(next(self.sources[i]), self.data.image_size) for i in picks]
        return torch.stack(images)  # (B, 1, S, S)

    def state_dict(self) -> dict[str, Any]:
        """Positions of every source (by index and name)."""
        return {"sources": [{"name": s.name, "state": s.state_dict()} for s in self.sources]}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Restores positions saved by :meth:`state_dict` (the source list must match)."""
        saved = state["sources"]
        names = [s.name for s in self.sources]
        if [s["name"] for s in saved] != names:
            raise ConfigError(
                f"checkpoint data sources {[s['name'] for s in saved]} differ from the config's {names}"
            )
        for source, s in zip(self.sources, saved, strict=True):
            source.load_state_dict(s["state"])

    def describe(self) -> list[dict[str, Any]]:
        """Source names, kinds, weights and sizes (for the model card)."""
        out = []
        for cfg, source, p in zip(self.data.sources, self.sources, self.probs, strict=True):
            size = None
            if isinstance(source, ShardSource):
                size = len(source.stream.dataset)
            elif isinstance(source, CacheSource):
                size = len(source.cache)
            out.append({"name": source.name, "kind": cfg.kind, "weight": float(p), "images": size})
        return out
