"""``cmrfm data prepare``: load a dataset with its adapter, preprocess, write a 2D cache.

The cache layout is described in :mod:`cmrfm.data.cache`. The cache is written into a hidden
sibling folder and moved into place only when complete, so an interrupted run never leaves a
half cache at OUT, and an existing folder is only replaced with ``overwrite=True`` and only if it
is itself a cmrfm cache.
"""

from __future__ import annotations

import csv
import json
import os
import shutil
import time
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, BinaryIO, Literal

import numpy as np

from cmrfm import __version__
from cmrfm.config import build_config, to_dict
from cmrfm.constants import Sequence
from cmrfm.data.adapters import ADAPTERS
from cmrfm.data.cache import (
    CACHE_FORMAT,
    CACHE_VERSION,
    IMAGES_FILE,
    INFO_FILE,
    LABEL_DTYPE,
    LABELS_FILE,
    MANIFEST_COLUMNS,
    MANIFEST_FILE,
    RECORDS_FILE,
    format_manifest_value,
)
from cmrfm.data.preprocess import PreprocessConfig, preprocess_series
from cmrfm.data.study import Series, Study
from cmrfm.errors import CmrfmError, InputError


@dataclass
class PrepareConfig(PreprocessConfig):
    """Settings of ``cmrfm data prepare`` (preprocessing fields plus what to write).

    Attributes:
        all_frames: Write every frame; default writes only labelled frames of labelled series
            (unlabelled series always contribute all their frames).
        max_studies: Prepare only the first N studies (quick subsets); None for all.
        image_dtype: Storage type of normalised images.
    """

    all_frames: bool = False
    max_studies: int | None = None
    image_dtype: Literal["float16", "float32"] = "float16"


@dataclass
class PrepareReport:
    """Outcome of a prepare run.

    Attributes:
        dataset: Adapter name.
        root: Dataset root.
        out: Cache folder (None when nothing was written).
        n_studies: Studies prepared.
        n_series: Series prepared.
        n_items: 2D items written.
        n_labelled: Items with a label map.
        failures: ``(study, reason)`` of each skipped study.
        seconds: Wall time.
    """

    dataset: str
    root: str
    out: str | None = None
    n_studies: int = 0
    n_series: int = 0
    n_items: int = 0
    n_labelled: int = 0
    failures: list[tuple[str, str]] = field(default_factory=list)
    seconds: float = 0.0

    def describe(self) -> str:
        """A short human-readable summary."""
        where = f"-> {self.out}" if self.out else "(nothing written)"
        lines = [
            f"{self.dataset}: {self.n_studies} studies, {self.n_series} series, {self.n_items} items "
            f"({self.n_labelled} labelled) in {self.seconds:.1f} s {where}"
        ]
        if self.failures:
            lines.append(f"{len(self.failures)} studies skipped:")
            lines += [f"  {study}: {reason}" for study, reason in self.failures]
        return "\n".join(lines)


def _phase(study: Study, series: Series, frame: int) -> str:
    if series.sequence != Sequence.CINE and series.num_frames == 1:
        return "na"
    if frame == study.clinical.ed_frame:
        return "ED"
    if frame == study.clinical.es_frame:
        return "ES"
    return "other"


def _check_out(out: Path, overwrite: bool) -> None:
    if out.exists() and not out.is_dir():
        raise InputError(out, "exists and is not a folder")
    if out.is_dir() and any(out.iterdir()):
        if not overwrite:
            raise InputError(out, "exists and is not empty; pass --overwrite to replace it")
        if not (out / INFO_FILE).is_file():
            raise InputError(out, "is not a cmrfm cache (no cache.json); refusing to delete it")


class _CacheWriter:
    """Streams items into a temporary cache folder."""

    def __init__(self, folder: Path, size: int, image_dtype: str) -> None:
        self.folder = folder
        self.size = size
        self.image_dtype = np.dtype(image_dtype).newbyteorder("<")
        self._images: BinaryIO = (folder / IMAGES_FILE).open("wb")
        self._labels: BinaryIO = (folder / LABELS_FILE).open("wb")
        self.rows: list[dict[str, Any]] = []
        self.records: list[dict[str, Any]] = []

    def add_record(self, study: str, series: str, record: dict[str, Any]) -> int:
        self.records.append({"study": study, "series": series, "record": record})
        return len(self.records) - 1

    def add(self, image: np.ndarray, label: np.ndarray | None, row: dict[str, Any]) -> None:
        self._images.write(np.ascontiguousarray(image, dtype=self.image_dtype).tobytes())
        blank = np.zeros((self.size, self.size), dtype=np.uint8)
        self._labels.write(np.ascontiguousarray(blank if label is None else label, dtype=np.uint8).tobytes())
        self.rows.append({"index": len(self.rows), **row})

    def close(self, info: dict[str, Any]) -> None:
        self._images.close()
        self._labels.close()
        with (self.folder / MANIFEST_FILE).open("w", newline="") as handle:
            writer = csv.writer(handle)
            writer.writerow(MANIFEST_COLUMNS)
            for row in self.rows:
                writer.writerow([format_manifest_value(row.get(c)) for c in MANIFEST_COLUMNS])
        with (self.folder / RECORDS_FILE).open("w") as handle:
            for record in self.records:
                handle.write(json.dumps(record) + "\n")
        info = {
            **info,
            "n_items": len(self.rows),
            "size": self.size,
            "image_dtype": self.image_dtype.str,
            "label_dtype": LABEL_DTYPE,
        }
        (self.folder / INFO_FILE).write_text(json.dumps(info, indent=2))

    def abort(self) -> None:
        self._images.close()
        self._labels.close()


def _write_study(writer: _CacheWriter, study: Study, config: PrepareConfig) -> tuple[int, int]:
    """Preprocesses every series of a study into the writer; returns (series, items) written."""
    n_series = n_items = 0
    for series in study.series:
        labelled = bool(series.labels)
        frames = range(series.num_frames) if config.all_frames or not labelled else sorted(series.labels)
        prepared = preprocess_series(series, config, frames=frames)
        record_id = writer.add_record(study.study_id, series.name, prepared.record.to_dict())
        spacing = series.spacing
        base = {
            "study": study.study_id,
            "dataset": study.dataset,
            "series": series.name,
            "group": None if study.clinical.group is None else str(study.clinical.group),
            "infarct": study.clinical.infarct,
            "sequence": None if series.sequence is None else str(series.sequence),
            "view": None if series.view is None else str(series.view),
            "vendor": series.metadata.get("vendor"),
            "spacing_x": spacing[0],
            "spacing_y": spacing[1],
            "spacing_z": spacing[2],
            "spacing_known": series.spacing_known,
            "num_slices": series.num_slices,
            "num_frames": series.num_frames,
            "record": record_id,
        }
        # Sources whose labelled frames are contoured on some slices only (Sunnybrook) list them in
        # metadata["labelled_slices"] ({frame: [slices]}); other slices are unlabelled, not background.
        partial = series.metadata.get("labelled_slices")
        for t, stack in prepared.images.items():  # stack (Z, H, W)
            labels = prepared.labels.get(t)
            for z in range(stack.shape[0]):
                label = None if labels is None else labels[z]
                if label is not None and partial is not None and z not in partial.get(str(t), ()):
                    label = None
                present = (
                    []
                    if label is None
                    else [series.label_names.get(int(v), str(v)) for v in np.unique(label) if v]
                )
                row = {
                    **base,
                    "slice": z,
                    "frame": t,
                    "phase": _phase(study, series, t),
                    "labelled": label is not None,
                    "labels_present": present,
                }
                writer.add(stack[z], label, row)
                n_items += 1
        n_series += 1
    return n_series, n_items


def prepare_dataset(
    name: str,
    root: str | Path,
    out: str | Path,
    overrides: list[str] | tuple[str, ...] = (),
    overwrite: bool = False,
    config: PrepareConfig | None = None,
    progress: bool = True,
) -> PrepareReport:
    """Loads every study under ``root`` with adapter ``name``, preprocesses it and writes a cache.

    Args:
        name: Adapter name (``acdc``, ``emidec``, ``mnms``, ...).
        root: Dataset root (or a single study).
        out: Cache folder to create.
        overrides: ``key=value`` settings of :class:`PrepareConfig` (e.g. ``size=96``).
        overwrite: Replace an existing cache at ``out``.
        config: Base config (defaults if None); overrides apply on top.
        progress: Show a progress bar.

    Returns:
        The report; bad studies are listed in ``failures`` and skipped.

    Raises:
        InputError: Bad root, or ``out`` exists and may not be replaced.
        ConfigError: Bad override.
    """
    start = time.perf_counter()
    config = build_config(PrepareConfig, overrides=overrides, base=config)
    config.validate()
    adapter = ADAPTERS.get(name)
    root, out = Path(root), Path(out)
    if not root.exists():
        raise InputError(root, "does not exist")
    _check_out(out, overwrite)
    paths = [root] if adapter.is_study(root) else adapter.list_studies(root)
    if not paths:
        raise InputError(root, f"no {name} studies found")
    if config.max_studies is not None:
        paths = paths[: config.max_studies]

    report = PrepareReport(dataset=name, root=str(root))
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = out.parent / f".{out.name}.partial-{os.getpid()}"
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir()
    writer = _CacheWriter(tmp, config.size, config.image_dtype)
    try:
        for path in _progress(paths, f"preparing {name}", progress):
            try:
                study = adapter.load_study(path)
                n_series, n_items = _write_study(writer, study, config)
            except (CmrfmError, ValueError, OSError) as err:
                report.failures.append((path.name, str(getattr(err, "reason", err))))
                continue
            report.n_studies += 1
            report.n_series += n_series
            report.n_items += n_items
        report.n_labelled = sum(1 for row in writer.rows if row["labelled"])
        writer.close(
            {
                "format": CACHE_FORMAT,
                "version": CACHE_VERSION,
                "cmrfm_version": __version__,
                "created_utc": datetime.now(UTC).isoformat(timespec="seconds"),
                "dataset": name,
                "root": str(root),
                "n_studies": report.n_studies,
                "failures": [list(f) for f in report.failures],
                "layout": "items (N, H, W) with H = Y, W = X of the source series",
                "config": to_dict(config),
            }
        )
        if report.n_items == 0:
            shutil.rmtree(tmp)
        else:
            if out.exists():
                shutil.rmtree(out)
            tmp.rename(out)
            report.out = str(out)
    except BaseException:
        writer.abort()
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    report.seconds = time.perf_counter() - start
    return report


def _progress(items: list[Path], description: str, enabled: bool):
    if not enabled:
        return items
    from rich.progress import track

    return track(items, description=description, transient=True)
