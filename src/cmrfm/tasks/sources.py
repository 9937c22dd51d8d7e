"""Where task data comes from: dataset roots, prepared caches made on first use, cache-backed items.

Roots resolve from an explicit option, else ``$CMRFM_DATA/<name>``, else ``../shared/data/<name>``
beside the working directory or the checkout. Prepared caches live in ``$CMRFM_CACHE`` (default
``~/.cache/cmrfm``) under a name that hashes the root and preprocessing options, so a changed
option never silently reuses a stale cache.
"""

from __future__ import annotations

import hashlib
import json
import os
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

from cmrfm.data.cache import PreparedCache
from cmrfm.data.preprocess import PreprocessRecord
from cmrfm.errors import InputError

#: Relative location of each public dataset under a data root.
DATASET_SUBDIRS = {"acdc": "acdc/training", "emidec": "emidec", "sunnybrook": "sunnybrook"}


def _candidates(name: str) -> list[Path]:
    sub = DATASET_SUBDIRS.get(name, name)
    out = []
    if os.environ.get("CMRFM_DATA"):
        out.append(Path(os.environ["CMRFM_DATA"]) / sub)
    out.append(Path.cwd().parent / "shared" / "data" / sub)
    out.append(Path(__file__).resolve().parents[3].parent / "shared" / "data" / sub)
    return out


def resolve_root(name: str, root: str | None) -> Path:
    """The dataset root to read: ``root`` when given, else the first default location that exists.

    Raises:
        InputError: When no location holds the dataset (names the places tried).
    """
    if root:
        path = Path(root).expanduser()
        if not path.exists():
            raise InputError(path, f"{name} data root does not exist")
        return path
    tried = _candidates(name)
    for path in tried:
        if path.exists():
            return path
    places = ", ".join(str(p) for p in tried)
    raise InputError(
        None, f"no {name} data found (tried {places}); pass task_options.root=DIR or set CMRFM_DATA"
    )


def cache_home() -> Path:
    """Folder of prepared caches (``$CMRFM_CACHE`` or ``~/.cache/cmrfm``)."""
    return Path(os.environ.get("CMRFM_CACHE", Path.home() / ".cache" / "cmrfm"))


def prepared_cache(
    name: str, root: str | None, cache: str | None, overrides: Sequence[str] = ()
) -> PreparedCache:
    """Opens ``cache`` if given, else a cache of dataset ``name`` prepared on first use.

    Args:
        name: Adapter name (``acdc``, ``emidec``, ...).
        root: Dataset root (default locations when empty).
        cache: An existing prepared cache folder; empty to manage one automatically.
        overrides: ``key=value`` preprocessing options for a cache made here.
    """
    if cache:
        return PreparedCache(cache)
    from cmrfm.data.prepare import prepare_dataset

    data_root = resolve_root(name, root)
    key = json.dumps({"name": name, "root": str(data_root.resolve()), "overrides": sorted(overrides)})
    digest = hashlib.sha1(key.encode()).hexdigest()[:10]
    folder = cache_home() / "prepared" / f"{name}-{digest}"
    if not (folder / "cache.json").is_file():
        report = prepare_dataset(name, data_root, folder, overrides=list(overrides), overwrite=True)
        if report.failures:
            for study, reason in report.failures:
                print(f"skipped {study}: {reason}")
    return PreparedCache(folder)


class CacheItems(Sequence[dict[str, Any]]):
    """A lazy sequence of task items over a prepared-cache view.

    Args:
        cache: The cache view (e.g. one fold's subjects).
        convert: Maps a cache item (``image``, ``label``, ``meta``) and its preprocessing record to
            a task item.
    """

    def __init__(
        self, cache: PreparedCache, convert: Callable[[dict[str, Any], PreprocessRecord], dict[str, Any]]
    ) -> None:
        self.cache = cache
        self.convert = convert

    def __len__(self) -> int:
        return len(self.cache)

    def __getitem__(self, index: int) -> dict[str, Any]:  # type: ignore[override]
        return self.convert(self.cache[index], self.cache.record(index))


def study_strata(cache: PreparedCache, column: str) -> tuple[list[str], list[str]]:
    """Distinct studies of a cache and one stratification value per study (from ``column``)."""
    first: dict[str, Any] = {}
    for row in cache.rows:
        first.setdefault(row["study"], row[column])
    return list(first), [str(v) for v in first.values()]
