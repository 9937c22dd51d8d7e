"""Reader of a prepared 2D cache (written by :func:`cmrfm.data.prepare.prepare_dataset`).

Cache format (a folder)::

    cache.json      format/version, item count, grid size, dtypes, layout, the PrepareConfig used,
                    dataset, root, studies and failures
    images.bin      raw little-endian float16 array (N, S, S): normalised images, (H, W) = (Y, X)
    labels.bin      raw uint8 array (N, S, S): internal label ids (zeros where unlabelled)
    manifest.csv    one row per item (see MANIFEST_COLUMNS)
    records.jsonl   one PreprocessRecord per series (line number = ``record`` column)

Both ``.bin`` files are memory-mapped, so a cache of any size opens instantly and items are
read lazily. The reader needs no torch; :class:`TorchPreparedDataset` wraps it for a DataLoader.
"""

from __future__ import annotations

import csv
import json
from collections.abc import Callable, Iterable, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from cmrfm.data.preprocess import PreprocessRecord
from cmrfm.errors import InputError

CACHE_FORMAT = "cmrfm-prepared-cache"
CACHE_VERSION = 1
INFO_FILE = "cache.json"
IMAGES_FILE = "images.bin"
LABELS_FILE = "labels.bin"
MANIFEST_FILE = "manifest.csv"
RECORDS_FILE = "records.jsonl"
IMAGE_DTYPE = "<f2"
LABEL_DTYPE = "|u1"

#: Manifest columns and how each is parsed back from text.
MANIFEST_COLUMNS: dict[str, Callable[[str], Any]] = {
    "index": int,
    "study": str,
    "dataset": str,
    "series": str,
    "slice": int,
    "frame": int,
    "phase": str,  # ED, ES, other (cine) or na
    "labelled": lambda v: v == "1",  # the frame has a label map
    "labels_present": lambda v: [s for s in v.split(";") if s],
    "group": lambda v: v or None,
    "infarct": lambda v: None if v == "" else v == "1",
    "sequence": lambda v: v or None,
    "view": lambda v: v or None,
    "vendor": lambda v: v or None,
    "spacing_x": float,  # source in-plane spacing (mm)
    "spacing_y": float,
    "spacing_z": float,
    "spacing_known": lambda v: v == "1",
    "num_slices": int,
    "num_frames": int,
    "record": int,  # line in records.jsonl
}


def format_manifest_value(value: Any) -> str:
    """Text written into the manifest for a value (inverse of :data:`MANIFEST_COLUMNS`)."""
    if value is None:
        return ""
    if isinstance(value, bool):
        return "1" if value else "0"
    if isinstance(value, list | tuple):
        return ";".join(str(v) for v in value)
    if isinstance(value, float):
        return f"{value:.6g}"
    return str(value)


class PreparedCache:
    """A prepared cache as an indexable dataset of 2D items.

    Args:
        path: The cache folder.

    Example:
        >>> cache = PreparedCache("/tmp/acdc")  # doctest: +SKIP
        >>> ed = cache.filter(phase="ED", labelled=True)  # doctest: +SKIP
        >>> item = ed[0]  # {"image": (S, S) float32, "label": (S, S) uint8, "meta": {...}}
    """

    def __init__(self, path: str | Path, _indices: np.ndarray | None = None, _shared: Any = None) -> None:
        self.path = Path(path)
        if _shared is None:
            _shared = self._open(self.path)
        self._shared = _shared
        self.info, self._rows, self._images, self._labels, self._records = _shared
        self._indices = np.arange(len(self._rows)) if _indices is None else np.asarray(_indices, dtype=int)

    @staticmethod
    def _open(path: Path) -> tuple:
        info_path = path / INFO_FILE
        if not info_path.is_file():
            raise InputError(path, "not a prepared cache (no cache.json); run `cmrfm data prepare`")
        try:
            info = json.loads(info_path.read_text())
        except json.JSONDecodeError as err:
            raise InputError(info_path, f"not valid JSON ({err})") from None
        if info.get("format") != CACHE_FORMAT or info.get("version") != CACHE_VERSION:
            raise InputError(
                info_path, f"unsupported cache format {info.get('format')} v{info.get('version')}"
            )
        n, size = int(info["n_items"]), int(info["size"])
        rows = _read_manifest(path / MANIFEST_FILE)
        if len(rows) != n:
            raise InputError(path / MANIFEST_FILE, f"has {len(rows)} rows, cache.json says {n}")
        images = _memmap(path / IMAGES_FILE, info.get("image_dtype", IMAGE_DTYPE), (n, size, size))
        labels = _memmap(path / LABELS_FILE, info.get("label_dtype", LABEL_DTYPE), (n, size, size))
        records = [json.loads(line) for line in (path / RECORDS_FILE).read_text().splitlines() if line]
        return info, rows, images, labels, records

    def __len__(self) -> int:
        return len(self._indices)

    def __getitem__(self, i: int) -> dict[str, Any]:
        """Item ``i``: ``image`` (S, S) float32, ``label`` (S, S) uint8 or None, ``meta`` (row)."""
        if not -len(self) <= i < len(self):
            raise IndexError(f"item {i} out of range for a cache of {len(self)}")
        row = self._rows[int(self._indices[i])]
        j = row["index"]
        label = np.array(self._labels[j]) if row["labelled"] else None
        return {"image": np.asarray(self._images[j], dtype=np.float32), "label": label, "meta": dict(row)}

    @property
    def size(self) -> int:
        """Side of the square item grid."""
        return int(self.info["size"])

    @property
    def rows(self) -> list[dict[str, Any]]:
        """Manifest rows of the items in this view."""
        return [self._rows[int(k)] for k in self._indices]

    def column(self, name: str) -> list[Any]:
        """One manifest column over the items in this view."""
        if name not in MANIFEST_COLUMNS:
            raise KeyError(f"unknown manifest column {name!r}; columns: {list(MANIFEST_COLUMNS)}")
        return [row[name] for row in self.rows]

    def studies(self) -> list[str]:
        """Distinct study ids in this view, in cache order."""
        return list(dict.fromkeys(self.column("study")))

    def filter(
        self, predicate: Callable[[dict[str, Any]], bool] | None = None, **where: Any
    ) -> PreparedCache:
        """A view of the items whose manifest matches.

        Args:
            predicate: Optional function of a manifest row.
            **where: ``column=value``; a list/tuple/set value matches any of its members; a
                callable value is called with the column's value.

        Raises:
            KeyError: On an unknown column.
        """
        for name in where:
            if name not in MANIFEST_COLUMNS:
                raise KeyError(f"unknown manifest column {name!r}; columns: {list(MANIFEST_COLUMNS)}")

        def keep(row: dict[str, Any]) -> bool:
            for name, wanted in where.items():
                value = row[name]
                if callable(wanted):
                    if not wanted(value):
                        return False
                elif isinstance(wanted, list | tuple | set | frozenset):
                    if value not in wanted:
                        return False
                elif value != wanted:
                    return False
            return predicate is None or bool(predicate(row))

        kept = [k for k in self._indices if keep(self._rows[int(k)])]
        return PreparedCache(self.path, _indices=np.array(kept, dtype=int), _shared=self._shared)

    def subset_studies(self, study_ids: Iterable[str]) -> PreparedCache:
        """A view of the items of the given studies (e.g. one fold's training subjects)."""
        return self.filter(study=set(study_ids))

    def record(self, i: int) -> PreprocessRecord:
        """The preprocessing record of item ``i`` (to map predictions back to the source grid)."""
        row = self._rows[int(self._indices[i])]
        entry = self._records[row["record"]]
        if "parsed" not in entry:
            entry["parsed"] = PreprocessRecord.from_dict(entry["record"])
        return entry["parsed"]

    def __getstate__(self) -> dict[str, Any]:
        # Pickled (DataLoader workers under spawn, DDP) as path + view: the memory maps are
        # re-opened on the other side instead of copying the arrays into the pickle.
        return {"path": self.path, "indices": self._indices}

    def __setstate__(self, state: dict[str, Any]) -> None:
        self.__init__(state["path"], _indices=state["indices"])

    def __repr__(self) -> str:
        return f"PreparedCache({str(self.path)!r}, items={len(self)}, size={self.size})"


class TorchPreparedDataset:
    """A map-style torch dataset over a :class:`PreparedCache` (usable by a DataLoader).

    Items are dicts: ``image`` (1, S, S) float32 tensor, ``label`` (S, S) int64 tensor (zeros
    when unlabelled), ``has_label`` bool, ``index`` int into the wrapped view.

    Args:
        cache: The cache or a filtered view of it.
        transform: Optional function applied to the item dict (augmentation).
    """

    def __init__(self, cache: PreparedCache, transform: Callable[[dict], dict] | None = None) -> None:
        self.cache = cache
        self.transform = transform

    def __len__(self) -> int:
        return len(self.cache)

    def __getitem__(self, i: int) -> dict[str, Any]:
        import torch

        item = self.cache[i]
        label = item["label"]
        out = {
            "image": torch.from_numpy(item["image"])[None],  # (1, S, S)
            "label": torch.from_numpy(
                np.zeros(item["image"].shape, dtype=np.int64) if label is None else label.astype(np.int64)
            ),  # (S, S)
            "has_label": label is not None,
            "index": i,
        }
        return self.transform(out) if self.transform is not None else out


def _memmap(path: Path, dtype: str, shape: Sequence[int]) -> np.ndarray:
    expected = int(np.prod(shape)) * np.dtype(dtype).itemsize
    if not path.is_file() or path.stat().st_size != expected:
        raise InputError(path, f"missing or truncated: expected {expected} bytes for {tuple(shape)} {dtype}")
    if expected == 0:
        return np.zeros(shape, dtype=dtype)
    return np.memmap(path, dtype=dtype, mode="r", shape=tuple(shape))


def _read_manifest(path: Path) -> list[dict[str, Any]]:
    if not path.is_file():
        raise InputError(path, "manifest missing")
    with path.open(newline="") as handle:
        reader = csv.DictReader(handle)
        missing = [c for c in MANIFEST_COLUMNS if c not in (reader.fieldnames or [])]
        if missing:
            raise InputError(path, f"manifest lacks columns {missing}")
        try:
            return [{name: parse(raw[name]) for name, parse in MANIFEST_COLUMNS.items()} for raw in reader]
        except ValueError as err:
            raise InputError(path, f"malformed manifest value ({err})") from None
