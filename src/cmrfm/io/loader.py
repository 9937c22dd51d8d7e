"""Load whatever a user points at: a file, a study folder, or a root of many studies."""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

from cmrfm.data.adapters import ADAPTERS, Adapter
from cmrfm.data.study import Study
from cmrfm.errors import CmrfmError, InputError


@dataclass
class LoadResult:
    """Outcome of loading one study: the study, or the reason it failed."""

    source: str
    study: Study | None = None
    error: str | None = None


def _adapters_by_priority() -> list[type[Adapter]]:
    return sorted((ADAPTERS.get(n) for n in ADAPTERS.names()), key=lambda a: -a.priority)


def detect_adapter(path: Path, name: str | None = None) -> tuple[type[Adapter], bool]:
    """Finds the adapter for ``path``; returns it and whether ``path`` is a single study.

    Args:
        path: A file or folder.
        name: Force this adapter instead of auto-detecting.

    Raises:
        InputError: When the path does not exist or no adapter recognises it.
    """
    if not path.exists():
        raise InputError(path, "does not exist")
    candidates = [ADAPTERS.get(name)] if name else _adapters_by_priority()
    for adapter in candidates:
        if adapter.is_study(path):
            return adapter, True
    for adapter in candidates:
        if path.is_dir() and adapter.is_root(path):
            return adapter, False
    if path.is_dir() and not any(os.scandir(path)):
        raise InputError(path, "folder is empty")
    what = (
        f"a {name} study or dataset root" if name else "a CMR study: no NIfTI, DICOM or known dataset layout"
    )
    raise InputError(path, f"not recognised as {what}")


def load_study(path: str | Path, adapter: str | None = None) -> Study:
    """Loads exactly one study; raises :class:`InputError` if ``path`` is not one study."""
    path = Path(path)
    found, single = detect_adapter(path, adapter)
    if not single:
        raise InputError(path, f"holds several {found.name} studies; give one of them")
    return found.load_study(path)


def load_studies(path: str | Path, adapter: str | None = None) -> list[LoadResult]:
    """Loads one study or every study under a root; bad studies are reported, not raised.

    Raises:
        InputError: Only when ``path`` itself cannot be read as a study or a root of studies.
    """
    path = Path(path)
    found, single = detect_adapter(path, adapter)
    paths = [path] if single else found.list_studies(path)
    results = []
    for study_path in paths:
        try:
            results.append(LoadResult(str(study_path), study=found.load_study(study_path)))
        except CmrfmError as err:
            # Name the file at fault when it is not the study itself (a label, one DICOM file).
            inner = getattr(err, "path", None) not in (None, str(study_path))
            reason = str(err) if inner else str(getattr(err, "reason", err))
            results.append(LoadResult(str(study_path), error=reason))
    return results
