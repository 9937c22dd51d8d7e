"""Write a simulated cohort to disk in the layout the ``nifti`` adapter reads back.

``DIR/<subject>/<series>.nii.gz`` (X, Y, Z, T; RAS affine) + ``<series>.json`` sidecar (sequence,
view, frame times, label names/convention, and under ``metadata`` the ground truth: landmarks per
frame and slice, motion grade and amplitude, breath-hold offsets, sequence parameters) +
``<series>_seg.nii.gz`` (4D, every frame, internal :class:`~cmrfm.constants.Label` ids);
``DIR/<subject>/study.json`` (clinical info for the loader) and ``DIR/<subject>/subject.json``
(subject-level truth: group, sex, age, body size, ED/ES frames, LV/RV volumes, EF and LV mass analytic
and from the SAX masks, all subject parameters). ``DIR/cohort.json`` lists the subjects.
With ``dicom=True`` each series is also written as DICOM under ``DIR/dicom/<subject>/<series>/``.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Sequence
from pathlib import Path

import numpy as np

from cmrfm.config import to_dict
from cmrfm.data.study import Study
from cmrfm.errors import InputError
from cmrfm.simulate.config import SimConfig, validate_config
from cmrfm.simulate.generator import simulate_study, subject_params
from cmrfm.simulate.params import parse_group

#: Subject-level truth file in each subject folder.
SUBJECT_FILE = "subject.json"
#: Cohort manifest at the cohort root.
COHORT_FILE = "cohort.json"


def subject_seed(seed: int, index: int) -> int:
    """Seed of subject ``index`` of a cohort drawn with ``seed``."""
    return int(np.random.SeedSequence([int(seed), int(index)]).generate_state(1)[0] % (2**31 - 1))


def subject_record(study: Study) -> dict:
    """The ``subject.json`` content of a simulated study."""
    c = study.clinical
    return {
        "subject": study.study_id,
        "group": None if c.group is None else str(c.group),
        "sex": c.extra.get("sex"),
        "age": c.extra.get("age"),
        "height_cm": c.height_cm,
        "weight_kg": c.weight_kg,
        "ed_frame": c.ed_frame,
        "es_frame": c.es_frame,
        "infarct": c.infarct,
        "field_strength_t": c.extra.get("field_strength_t"),
        "truth": c.extra.get("truth", {}),
        "params": c.extra.get("params", {}),
        "series": [s.name for s in study.series],
    }


def write_subject(study: Study, folder: str | Path, dicom_root: str | Path | None = None) -> Path:
    """Writes one simulated study (NIfTI + sidecars + labels + study/subject JSON; optional DICOM)."""
    from cmrfm.io.writers import save_series_dicom, save_study

    folder = Path(folder)
    save_study(study, folder)
    (folder / SUBJECT_FILE).write_text(json.dumps(subject_record(study), indent=2))
    if dicom_root is not None:
        from pydicom.uid import generate_uid

        study_uid = generate_uid()
        for number, series in enumerate(study.series, start=1):
            save_series_dicom(series, Path(dicom_root) / study.study_id / series.name, study_uid, number)
    return folder


def write_cohort(
    out: str | Path,
    n_subjects: int,
    seed: int = 0,
    config: SimConfig | None = None,
    pathologies: Sequence[str] = (),
    dicom: bool = False,
    overwrite: bool = False,
    progress: Callable[[int, str], None] | None = None,
) -> list[Path]:
    """Simulates ``n_subjects`` and writes them under ``out``; groups cycle for balance.

    Args:
        out: Cohort folder (created).
        n_subjects: Number of subjects.
        seed: Cohort seed; subject ``i`` uses :func:`subject_seed` (seed, i).
        config: Simulation settings.
        pathologies: Groups to cycle through (default ``config.groups`` or all five).
        dicom: Also write DICOM series under ``out/dicom``.
        overwrite: Allow writing into a non-empty folder.
        progress: Called with (index, subject folder name) after each subject.

    Raises:
        InputError: When ``out`` is a non-empty folder and ``overwrite`` is False.
        ConfigError: For bad settings or an unknown pathology.
    """
    from cmrfm.errors import ConfigError

    config = validate_config(config or SimConfig())
    if n_subjects < 1:
        raise ConfigError(f"--subjects must be >= 1, got {n_subjects}")
    groups = [parse_group(g) for g in (pathologies or config.groups)] or None
    out = Path(out)
    if out.exists() and not out.is_dir():
        raise InputError(out, "exists and is not a folder")
    if out.is_dir() and any(out.iterdir()) and not overwrite:
        raise InputError(out, "folder is not empty; give an empty folder or --overwrite")
    out.mkdir(parents=True, exist_ok=True)
    folders, manifest = [], []
    for index in range(n_subjects):
        s_seed = subject_seed(seed, index)
        group = groups[index % len(groups)] if groups else None
        params = subject_params(s_seed, config, group=group)
        name = f"sim{index:04d}"
        study = simulate_study(params, config, seed=s_seed, study_id=name)
        folders.append(write_subject(study, out / name, out / "dicom" if dicom else None))
        manifest.append({"subject": name, "seed": s_seed, "group": str(params.group)})
        if progress is not None:
            progress(index, name)
    (out / COHORT_FILE).write_text(
        json.dumps({"seed": seed, "config": to_dict(config), "subjects": manifest}, indent=2)
    )
    return folders
