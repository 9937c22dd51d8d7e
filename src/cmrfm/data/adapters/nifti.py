"""Plain NIfTI: one file is a study; a folder of NIfTI files is one study with a series per file.

Label files (``<stem>_gt/_seg/_label/_labels``) are paired with their image, never separate
series, and JSON sidecars are read as described in :mod:`cmrfm.io.nifti`. A folder whose
sub-folders are such studies is a root (the simulator's cohorts: ``<root>/<subject>/<series>.nii.gz``).

A study folder may hold ``study.json`` with clinical metadata (never identifiers)::

    {"clinical": {"group": "DCM", "ed_frame": 0, "es_frame": 9, "height_cm": 170,
                  "weight_kg": 70, "infarct": false, "extra": {"any": "JSON"}}}
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from cmrfm.constants import GROUP_ALIASES
from cmrfm.data.adapters.base import Adapter, register_adapter
from cmrfm.data.adapters.dicom_folder import claimed_as_root_by_higher_priority
from cmrfm.data.study import ClinicalInfo, Study
from cmrfm.errors import InputError
from cmrfm.io.nifti import is_nifti, list_nifti_images, nifti_stem, read_nifti

#: Lowest detection priority: any folder with NIfTI files would match.
PRIORITY = 10

#: Optional clinical metadata file in a NIfTI study folder.
STUDY_FILE = "study.json"

_CLINICAL_NUMBERS = {"height_cm": float, "weight_kg": float, "ed_frame": int, "es_frame": int}


def read_clinical(path: Path) -> ClinicalInfo:
    """Reads ``study.json``'s ``clinical`` object; an absent file gives empty clinical info.

    Raises:
        InputError: When the file is not valid JSON or a value has the wrong type.
    """
    if not path.is_file():
        return ClinicalInfo()
    try:
        data = json.loads(path.read_text())
        clinical: dict[str, Any] = dict(data.get("clinical") or {})
    except (OSError, UnicodeDecodeError, json.JSONDecodeError, AttributeError, TypeError) as err:
        raise InputError(path, f"not a valid study.json ({err})") from None
    info = ClinicalInfo(extra=dict(clinical.get("extra") or {}))
    group = clinical.get("group")
    if group is not None:
        if str(group).upper() not in GROUP_ALIASES:
            raise InputError(path, f"unknown group {group!r}; valid: {', '.join(GROUP_ALIASES)}")
        info.group = GROUP_ALIASES[str(group).upper()]
    for key, kind in _CLINICAL_NUMBERS.items():
        if clinical.get(key) is not None:
            try:
                setattr(info, key, kind(clinical[key]))
            except (TypeError, ValueError):
                raise InputError(path, f"{key} must be a number, got {clinical[key]!r}") from None
    if clinical.get("infarct") is not None:
        info.infarct = bool(clinical["infarct"])
    return info


@register_adapter("nifti", priority=PRIORITY)
class NiftiAdapter(Adapter):
    """A NIfTI file, a folder of NIfTI files (one study), or a folder of such folders."""

    @classmethod
    def is_study(cls, path: Path) -> bool:
        """A NIfTI file, or a folder with NIfTI images directly inside."""
        if path.is_file():
            return is_nifti(path)
        return (
            path.is_dir()
            and bool(list_nifti_images(path))
            and not claimed_as_root_by_higher_priority(cls, path)
        )

    @classmethod
    def is_root(cls, path: Path) -> bool:
        """A folder that is not a study but has sub-folders that are."""
        return (
            path.is_dir() and not cls.is_study(path) and any(cls.is_study(p) for p in cls.list_studies(path))
        )

    @classmethod
    def list_studies(cls, root: Path) -> list[Path]:
        """Sub-folders holding NIfTI files."""
        if not root.is_dir():
            return []
        return sorted(
            p
            for p in root.iterdir()
            if p.is_dir() and not p.name.startswith(".") and any(is_nifti(f) for f in p.iterdir())
        )

    @classmethod
    def load_study(cls, path: Path) -> Study:
        """Reads every image (with its paired labels and sidecar) into one study."""
        if path.is_file():
            series = [read_nifti(path, with_labels=True)]
            return Study(nifti_stem(path), series, source=str(path), dataset=cls.name)
        images = list_nifti_images(path)
        if not images:
            raise InputError(path, "no NIfTI image in this folder")
        series = [read_nifti(p, with_labels=True) for p in images]
        names = [s.name for s in series]
        for s, p in zip(series, images, strict=True):
            if names.count(s.name) > 1:
                s.name = nifti_stem(p)
        return Study(
            path.name, series, clinical=read_clinical(path / STUDY_FILE), source=str(path), dataset=cls.name
        )
