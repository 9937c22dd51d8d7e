"""A sharded streaming format for 2D CMR images: corpora far larger than RAM, read with bounded memory.

Layout of a shard folder::

    index.json             {"format", "dtype", "num_images", "shards": [{"file", "count", "bytes", "crc32"}]}
    shard_000000.bin       magic + JSON header (per-image shape and offset) + raw pixels
    shard_000001.bin       ...

Pixels are ``uint8`` (each image robustly rescaled to 0..255 between its 0.5th and 99.5th percentiles)
or ``float16`` (the same rescaling to [0, 1]). At 128×128 uint8 a 36 M-image corpus is ~590 GB in
~18 k shards of 2048 images (32 MB each); the index stays a few MB.

Reading: :class:`ShardDataset` loads one shard at a time into a bounded LRU cache and verifies its
CRC32. :class:`ShardStream` is an endless, deterministic, distributed-aware stream: every epoch the shard
order is shuffled with ``(seed, epoch)``, rank ``r`` of ``W`` takes shards ``r, r+W, ...`` (or, with fewer
shards than ranks, every ``W``-th image of every shard), and images are shuffled within a shard. Its
position is two integers, so a run resumes exactly where it stopped.
"""

from __future__ import annotations

import json
import os
import zlib
from collections import OrderedDict
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from cmrfm import __version__
from cmrfm.errors import InputError

#: Magic bytes at the start of every shard file.
MAGIC = b"CMRFMSH1"
#: Index file name inside a shard folder.
INDEX_NAME = "index.json"
#: Format tag written into the index.
FORMAT = "cmrfm-shards/1"
#: Default images per shard (32 MB at 128×128 uint8).
DEFAULT_IMAGES_PER_SHARD = 2048
#: Percentiles used to rescale intensities before quantisation.
LOW_PERCENTILE, HIGH_PERCENTILE = 0.5, 99.5
#: Largest uint8 value.
UINT8_MAX = 255
#: Bytes of the little-endian header-length field after the magic.
HEADER_LEN_BYTES = 8
DTYPES = {"uint8": np.uint8, "float16": np.float16}


def rescale_unit(image: np.ndarray) -> np.ndarray:
    """Rescales an image to [0, 1] between its 0.5th and 99.5th percentiles (clipped), as float32."""
    image = np.asarray(image, dtype=np.float32)
    lo, hi = np.percentile(image, [LOW_PERCENTILE, HIGH_PERCENTILE])
    if not np.isfinite(lo) or not np.isfinite(hi) or hi <= lo:
        return np.zeros_like(image)
    return np.clip((image - lo) / (hi - lo), 0.0, 1.0).astype(np.float32)


def _encode(image: np.ndarray, dtype: str) -> np.ndarray:
    unit = rescale_unit(image)
    if dtype == "uint8":
        return np.round(unit * UINT8_MAX).astype(np.uint8)
    return unit.astype(np.float16)


def decode(pixels: np.ndarray) -> np.ndarray:
    """Stored pixels -> float32 image in [0, 1]."""
    if pixels.dtype == np.uint8:
        return pixels.astype(np.float32) / UINT8_MAX
    return pixels.astype(np.float32)


class ShardWriter:
    """Writes 2D images into shards plus an index. Use as a context manager.

    Args:
        out: Output folder (created; must be empty unless ``overwrite``).
        dtype: ``"uint8"`` or ``"float16"``.
        images_per_shard: Images per shard file.
        overwrite: Replace an existing shard folder.
        description: Free-form provenance stored in the index (data mixture, preprocessing).
    """

    def __init__(
        self,
        out: str | Path,
        dtype: str = "uint8",
        images_per_shard: int = DEFAULT_IMAGES_PER_SHARD,
        overwrite: bool = False,
        description: dict[str, Any] | None = None,
    ) -> None:
        if dtype not in DTYPES:
            raise InputError(None, f"shard dtype must be one of {list(DTYPES)}, got {dtype!r}")
        if images_per_shard < 1:
            raise InputError(None, f"images_per_shard must be >= 1, got {images_per_shard}")
        self.out = Path(out)
        if self.out.exists() and any(self.out.iterdir()):
            if not overwrite:
                raise InputError(self.out, "output folder is not empty (use --overwrite to replace it)")
            for old in [*self.out.glob("shard_*.bin"), self.out / INDEX_NAME]:
                old.unlink(missing_ok=True)
        self.out.mkdir(parents=True, exist_ok=True)
        self.dtype = dtype
        self.images_per_shard = images_per_shard
        self.description = description or {}
        self.shards: list[dict[str, Any]] = []
        self._pending: list[np.ndarray] = []
        self.num_images = 0

    def add(self, image: np.ndarray) -> None:
        """Adds one 2D image (any real dtype; rescaled and quantised here)."""
        image = np.asarray(image)
        if image.ndim != 2 or min(image.shape) < 1:
            raise InputError(None, f"shards hold 2D images, got shape {image.shape}")
        self._pending.append(_encode(image, self.dtype))
        self.num_images += 1
        if len(self._pending) >= self.images_per_shard:
            self._flush()

    def _flush(self) -> None:
        if not self._pending:
            return
        name = f"shard_{len(self.shards):06d}.bin"
        offsets, shapes, pos = [], [], 0
        for img in self._pending:
            offsets.append(pos)
            shapes.append(list(img.shape))
            pos += img.nbytes
        header = json.dumps({"dtype": self.dtype, "shapes": shapes, "offsets": offsets}).encode()
        payload = b"".join(np.ascontiguousarray(img).tobytes() for img in self._pending)
        tmp = self.out / (name + ".tmp")
        with open(tmp, "wb") as handle:
            handle.write(MAGIC + len(header).to_bytes(HEADER_LEN_BYTES, "little") + header + payload)
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(tmp, self.out / name)
        self.shards.append(
            {"file": name, "count": len(self._pending), "bytes": len(payload), "crc32": zlib.crc32(payload)}
        )
        self._pending = []

    def close(self) -> Path:
        """Flushes the last shard and writes the index; returns the index path."""
        self._flush()
        index = {
            "format": FORMAT,
            "dtype": self.dtype,
            "num_images": self.num_images,
            "shards": self.shards,
            "description": self.description,
            "cmrfm_version": __version__,
        }
        path = self.out / INDEX_NAME
        tmp = path.with_name(INDEX_NAME + ".tmp")
        tmp.write_text(json.dumps(index, indent=1))
        os.replace(tmp, path)
        return path

    def __enter__(self) -> ShardWriter:
        return self

    def __exit__(self, *exc: object) -> None:
        if exc[0] is None:
            self.close()


class ShardDataset:
    """Random access to a shard folder with a bounded in-memory cache of decoded shards.

    Args:
        root: Shard folder (with ``index.json``).
        cache_shards: How many shards may be held in memory at once (LRU).
        verify: Check each shard's CRC32 when it is loaded.

    Raises:
        InputError: Missing/unreadable index, missing shard files, or an empty corpus.
    """

    def __init__(self, root: str | Path, cache_shards: int = 2, verify: bool = True) -> None:
        self.root = Path(root)
        index_path = self.root / INDEX_NAME
        if not index_path.is_file():
            raise InputError(self.root, f"not a shard folder: {INDEX_NAME} is missing")
        try:
            self.index = json.loads(index_path.read_text())
        except (json.JSONDecodeError, UnicodeDecodeError) as err:
            raise InputError(index_path, f"shard index is not valid JSON ({err})") from None
        if self.index.get("format") != FORMAT:
            raise InputError(index_path, f"unknown shard format {self.index.get('format')!r}")
        self.shards: list[dict[str, Any]] = self.index["shards"]
        missing = [s["file"] for s in self.shards if not (self.root / s["file"]).is_file()]
        if missing:
            raise InputError(self.root, f"{len(missing)} shard file(s) missing, e.g. {missing[:3]}")
        self.counts = np.array([s["count"] for s in self.shards], dtype=np.int64)
        if self.counts.sum() == 0:
            raise InputError(self.root, "shard folder holds no images")
        self.starts = np.concatenate([[0], np.cumsum(self.counts)[:-1]])
        self.cache_shards = max(1, cache_shards)
        self.verify = verify
        self._cache: OrderedDict[int, list[np.ndarray]] = OrderedDict()

    def __len__(self) -> int:
        return int(self.counts.sum())

    @property
    def num_shards(self) -> int:
        """Number of shard files."""
        return len(self.shards)

    def load_shard(self, i: int) -> list[np.ndarray]:
        """The stored pixel arrays of shard ``i`` (cached; evicts the least recently used shard)."""
        if i in self._cache:
            self._cache.move_to_end(i)
            return self._cache[i]
        images = self._read(i)
        self._cache[i] = images
        while len(self._cache) > self.cache_shards:
            self._cache.popitem(last=False)
        return images

    def _read(self, i: int) -> list[np.ndarray]:
        info = self.shards[i]
        path = self.root / info["file"]
        try:
            with open(path, "rb") as handle:
                if handle.read(len(MAGIC)) != MAGIC:
                    raise InputError(path, "not a cmrfm shard (bad magic bytes)")
                header_len = int.from_bytes(handle.read(HEADER_LEN_BYTES), "little")
                header = json.loads(handle.read(header_len))
                payload = handle.read()
        except (OSError, json.JSONDecodeError, UnicodeDecodeError) as err:
            raise InputError(path, f"shard is unreadable ({err})") from None
        if len(payload) != info["bytes"]:
            raise InputError(path, f"shard is truncated: {len(payload)} of {info['bytes']} bytes")
        if self.verify and zlib.crc32(payload) != info["crc32"]:
            raise InputError(path, "shard is corrupt (CRC32 mismatch)")
        dtype = DTYPES[header["dtype"]]
        buffer = np.frombuffer(payload, dtype=np.uint8)
        out = []
        for offset, shape in zip(header["offsets"], header["shapes"], strict=True):
            nbytes = int(np.prod(shape)) * np.dtype(dtype).itemsize
            out.append(buffer[offset : offset + nbytes].view(dtype).reshape(shape))
        return out

    def __getitem__(self, index: int) -> np.ndarray:
        """Image ``index`` as float32 in [0, 1]."""
        if not 0 <= index < len(self):
            raise IndexError(index)
        shard = int(np.searchsorted(self.starts, index, side="right") - 1)
        return decode(self.load_shard(shard)[index - int(self.starts[shard])])


@dataclass
class StreamPosition:
    """Where a :class:`ShardStream` is: the epoch and how many images of it this rank consumed."""

    epoch: int = 0
    offset: int = 0


class ShardStream:
    """An endless, deterministic, distributed-aware stream of images from a :class:`ShardDataset`.

    Args:
        dataset: The shards.
        seed: Shuffling seed (the same on every rank).
        rank: This process's rank.
        world_size: Number of processes.
        shuffle: Shuffle shard order and images within shards every epoch.
    """

    def __init__(
        self, dataset: ShardDataset, seed: int = 0, rank: int = 0, world_size: int = 1, shuffle: bool = True
    ) -> None:
        self.dataset = dataset
        self.seed = seed
        self.rank = rank
        self.world_size = world_size
        self.shuffle = shuffle
        self.position = StreamPosition()
        self._plan_epoch: int | None = None
        self._plan: list[tuple[int, np.ndarray]] = []
        self._plan_ends = np.zeros(0, dtype=np.int64)

    def _epoch_plan(self, epoch: int) -> list[tuple[int, np.ndarray]]:
        """This rank's (shard, image indices) list for ``epoch`` (index arrays are small int32)."""
        if self._plan_epoch == epoch:
            return self._plan
        rng = np.random.default_rng([self.seed, epoch])
        n = self.dataset.num_shards
        order = rng.permutation(n) if self.shuffle else np.arange(n)
        plan = []
        if n >= self.world_size:
            mine = order[self.rank :: self.world_size]
            for s in mine:
                local = np.arange(self.dataset.counts[s], dtype=np.int32)
                plan.append((int(s), local))
        else:
            for s in order:
                local = np.arange(self.dataset.counts[s], dtype=np.int32)[self.rank :: self.world_size]
                plan.append((int(s), local))
        if self.shuffle:
            plan = [(s, np.random.default_rng([self.seed, epoch, s]).permutation(idx)) for s, idx in plan]
        if sum(len(idx) for _, idx in plan) == 0:
            raise InputError(self.dataset.root, f"rank {self.rank} of {self.world_size} receives no images")
        self._plan_epoch, self._plan = epoch, plan
        self._plan_ends = np.cumsum([len(idx) for _, idx in plan])
        return plan

    def __iter__(self) -> Iterator[np.ndarray]:
        return self

    def __next__(self) -> np.ndarray:
        """The next image (float32 in [0, 1]); wraps to the next epoch at the end of this one."""
        while True:
            plan = self._epoch_plan(self.position.epoch)
            offset = self.position.offset
            if offset < self._plan_ends[-1]:
                k = int(np.searchsorted(self._plan_ends, offset, side="right"))
                shard, idx = plan[k]
                local = offset - (int(self._plan_ends[k - 1]) if k else 0)
                self.position.offset += 1
                return decode(self.dataset.load_shard(shard)[int(idx[local])])
            self.position = StreamPosition(self.position.epoch + 1, 0)

    def state_dict(self) -> dict[str, int]:
        """The stream position (enough to resume exactly)."""
        return {"epoch": self.position.epoch, "offset": self.position.offset}

    def load_state_dict(self, state: dict[str, int]) -> None:
        """Jumps to a position saved by :meth:`state_dict`."""
        self.position = StreamPosition(int(state["epoch"]), int(state["offset"]))


#: Default side of the square field of view cut around the image centre of raw studies (mm).
DEFAULT_CROP_MM = 200.0


@dataclass
class ShardReport:
    """What :func:`build_shards` wrote.

    Attributes:
        out: The shard folder.
        num_images: Images written.
        num_shards: Shard files written.
        per_input: Images contributed by each input.
        failures: ``(input or study, reason)`` for what could not be read.
    """

    out: Path
    num_images: int
    num_shards: int
    per_input: dict[str, int]
    failures: list[tuple[str, str]]

    def describe(self) -> str:
        """A short human-readable summary."""
        parts = ", ".join(f"{Path(k).name}: {v}" for k, v in self.per_input.items())
        text = f"wrote {self.num_images} images in {self.num_shards} shards to {self.out} ({parts})"
        for source, reason in self.failures:
            text += f"\nfailed {source}: {reason}"
        return text


def _square_resize(image: np.ndarray, side_px: float | None, size: int) -> np.ndarray:
    """Centre-crops a square of ``side_px`` pixels (whole short side when None) and resizes to ``size``.

    With ``size <= 0`` the crop keeps its own size, and without ``side_px`` the image is kept whole.
    """
    from scipy.ndimage import zoom

    h, w = image.shape
    if size <= 0 and side_px is None:
        return image.astype(np.float32)  # keep the image as it is
    side = min(h, w) if side_px is None else max(1, min(h, w, round(side_px)))
    top, left = (h - side) // 2, (w - side) // 2
    crop = image[top : top + side, left : left + side].astype(np.float32)
    if size <= 0 or side == size:
        return crop
    return zoom(crop, size / side, order=1)[:size, :size]


def _study_slices(study: Any, size: int, crop_mm: float) -> Iterator[np.ndarray]:
    """Every 2D (slice, frame) image of every series, as (H, W) = (Y, X), cropped around the centre."""
    for series in study.series:
        spacing = series.spacing if series.spacing_known else None
        side_px = None if spacing is None else crop_mm / float(min(spacing[0], spacing[1]))
        _, _, z, t = series.image.shape
        for k in range(z):
            for f in range(t):
                yield _square_resize(series.image[:, :, k, f].T, side_px, size)  # (Y, X)


def build_shards(
    inputs: list[str | Path],
    out: str | Path,
    dtype: str = "uint8",
    images_per_shard: int = DEFAULT_IMAGES_PER_SHARD,
    size: int = 128,
    crop_mm: float = DEFAULT_CROP_MM,
    overwrite: bool = False,
    progress: bool = False,
) -> ShardReport:
    """Writes every 2D image of ``inputs`` into a shard folder (labels and identifiers are dropped).

    Args:
        inputs: Prepared caches (``cmrfm data prepare``; already heart-centred) and/or anything
            :func:`cmrfm.io.loader.load_studies` reads (a study, a dataset root, a DICOM folder).
        out: Shard folder to create.
        dtype: ``uint8`` or ``float16`` pixels.
        images_per_shard: Images per shard file.
        size: Output side in pixels (0 keeps each image's own size).
        crop_mm: Field of view cut around the centre of raw studies with known spacing (mm).
        overwrite: Replace an existing shard folder.
        progress: Show a progress bar.

    Returns:
        A :class:`ShardReport`.
    """
    from cmrfm.data.cache import INFO_FILE, PreparedCache
    from cmrfm.io.loader import load_studies

    per_input: dict[str, int] = {}
    failures: list[tuple[str, str]] = []
    description = {"inputs": [Path(p).name for p in inputs], "size": size, "crop_mm": crop_mm}
    with ShardWriter(out, dtype, images_per_shard, overwrite, description) as writer:
        for source in inputs:
            source_path = Path(source)
            before = writer.num_images
            if (source_path / INFO_FILE).is_file():
                cache = PreparedCache(source_path)
                for i in _progress_range(len(cache), progress, source_path.name):
                    writer.add(_square_resize(cache[i]["image"], None, size))
            else:
                for result in load_studies(source_path):
                    if result.study is None:
                        failures.append((result.source, result.error or "unreadable"))
                        continue
                    for image in _study_slices(result.study, size, crop_mm):
                        writer.add(image)
            per_input[str(source)] = writer.num_images - before
            if per_input[str(source)] == 0:
                failures.append((str(source), "no images found"))
        num_images, num_shards = writer.num_images, len(writer.shards) + (1 if writer._pending else 0)
    return ShardReport(Path(out), num_images, num_shards, per_input, failures)


def _progress_range(n: int, show: bool, label: str) -> Iterator[int]:
    if not show:
        yield from range(n)
        return
    from rich.progress import track

    yield from track(range(n), description=f"sharding {label}")
