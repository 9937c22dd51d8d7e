"""``quality-cls``: respiratory-motion artefact grade 1-3 (CMRxMotion scale) of a 2D image.

Two sources, so that real anatomy appears with every grade:

* simulated cine and LGE slices with the grade the simulator acquired them with (maps carry no
  motion artefact in the simulator and are left out);
* real ACDC (cine) and EMIDEC (LGE) slices corrupted in k-space with a known grade
  (:func:`cmrfm.tasks.motion_artefact.corrupt_motion`, the simulator's line-mixing model). Each
  patient's slices cycle through grades 1, 2, 3; the corruption of an item is a fixed function of
  ``corrupt_seed``, the patient and the slice, so folds and evaluations see the same images.

Kappa is quadratic-weighted (ordinal grades). Subjects are stratified by source.
"""

from __future__ import annotations

import functools
import zlib
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from cmrfm.constants import Sequence as MRSequence
from cmrfm.data.cache import PreparedCache
from cmrfm.errors import InputError
from cmrfm.tasks.augment import AugmentConfig
from cmrfm.tasks.base import TaskData, TaskInfo, register_task
from cmrfm.tasks.items import ItemDataset, phantom_slice
from cmrfm.tasks.kinds import ClassificationConfig, ClassificationTask
from cmrfm.tasks.mixed import ItemMaker, real_slices, spread, subject_factory
from cmrfm.tasks.motion_artefact import corrupt_motion
from cmrfm.tasks.simcohort import SimSubject, sim_cohort

GRADES = (1, 2, 3)
CLASSES = tuple(str(g) for g in GRADES)
#: Sequences with motion artefacts in the simulator.
MAGNITUDE_SEQUENCES = (str(MRSequence.CINE), str(MRSequence.LGE))
#: Real datasets corrupted here: (adapter, manifest filter).
REAL_SOURCES: tuple[tuple[str, dict[str, Any]], ...] = (("acdc", {"labelled": True}), ("emidec", {}))


@dataclass
class QualityClsConfig(ClassificationConfig):
    """``quality-cls`` settings (quadratic-weighted kappa by default).

    Attributes:
        acdc_root: ACDC training folder (default locations when empty).
        emidec_root: EMIDEC root (default locations when empty).
        real: Include k-space-corrupted real slices (datasets found; missing ones are reported).
        real_per_subject: Slices per real patient (grades cycle over them).
        corrupt_seed: Seed of the real-slice corruptions.
        sim_subjects: Simulated subjects.
        sim_seed: Simulated cohort seed.
        sim_frames: Cine frames per cycle in the simulator.
        sim_per_series: Slices per simulated cine/LGE series (a series has one grade).
        augment: Augmentation ranges.
    """

    kappa_weights: str | None = "quadratic"
    acdc_root: str = ""
    emidec_root: str = ""
    real: bool = True
    real_per_subject: int = 6
    corrupt_seed: int = 0
    sim_subjects: int = 60
    sim_seed: int = 0
    sim_frames: int = 6
    sim_per_series: int = 3
    augment: AugmentConfig = field(default_factory=AugmentConfig)


def _stable(text: str) -> int:
    return zlib.crc32(text.encode())


def corrupted_item(
    image: np.ndarray,
    label: np.ndarray | None,
    grade: int,
    spacing_mm: float,
    subject: str,
    seed: int,
    key: int,
) -> dict[str, Any]:
    """A quality item: ``image`` corrupted to ``grade`` (deterministic in seed, subject and key)."""
    rng = np.random.default_rng([seed, _stable(subject), key])
    heart = None if label is None else np.asarray(label) > 0
    out, _ = corrupt_motion(image, grade, spacing_mm, rng, heart)
    return {"image": out, "label": grade - 1, "subject": subject}


def _real_item(cache: PreparedCache, position: int, grade: int, subject: str, seed: int) -> dict[str, Any]:
    item = cache[position]
    spacing = cache.record(position).out_spacing
    return corrupted_item(item["image"], item["label"], grade, spacing, subject, seed, position)


def _sim_item(subject: SimSubject, k: int) -> dict[str, Any]:
    return {
        "image": subject.images[k],
        "label": int(subject.rows[k]["grade"]) - 1,
        "subject": subject.subject,
    }


def sim_quality_makers(cohort: Sequence[SimSubject], per_series: int) -> dict[str, list[ItemMaker]]:
    """Per simulated subject: up to ``per_series`` slices of each cine/LGE series, graded by the simulator."""
    out: dict[str, list[ItemMaker]] = {}
    for subject in cohort:
        series = dict.fromkeys(r["series"] for r in subject.rows if r["sequence"] in MAGNITUDE_SEQUENCES)
        makers: list[ItemMaker] = []
        for name in series:
            chosen = spread(subject.select(lambda r, n=name: r["series"] == n), per_series)
            makers += [functools.partial(_sim_item, subject, k) for k in chosen]
        out[subject.subject] = makers
    return out


def cycled_grades(subject: str, count: int) -> list[int]:
    """Grades for a patient's ``count`` slices: 1, 2, 3 in turn from a patient-dependent start."""
    start = _stable(subject) % len(GRADES)
    return [GRADES[(start + j) % len(GRADES)] for j in range(count)]


@register_task
class QualityCls(ClassificationTask):
    """CMRxMotion respiratory-artefact grade of a 2D image."""

    info = TaskInfo(
        id="quality-cls",
        title="Image quality: respiratory-motion artefact grade 1-3 (CMRxMotion)",
        kind="classification",
        level="image",
        data="simulator (graded) + ACDC/EMIDEC slices corrupted in k-space with known grade",
        metric="kappa",
        classes=CLASSES,
    )
    config_cls = QualityClsConfig

    def _dataset(self, makers: Sequence[ItemMaker], train: bool) -> ItemDataset:
        return ItemDataset(makers, train, self.config.augment)

    def load_data(self) -> TaskData:
        """Simulated graded slices plus corrupted real slices, stratified by source."""
        cfg = self.config
        makers: dict[str, list[ItemMaker]] = {}
        strata: dict[str, str] = {}
        notes = []
        roots = {"acdc": cfg.acdc_root, "emidec": cfg.emidec_root}
        for name, where in REAL_SOURCES if cfg.real else ():
            try:
                cache, picks = real_slices(
                    name, roots[name], "", cfg.image_size, cfg.real_per_subject, **where
                )
            except InputError as err:
                notes.append(f"{name} skipped ({err.reason})")
                continue
            for study, positions in picks.items():
                grades = cycled_grades(study, len(positions))
                makers[study] = [
                    functools.partial(_real_item, cache, p, g, study, cfg.corrupt_seed)
                    for p, g in zip(positions, grades, strict=True)
                ]
                strata[study] = name
            notes.append(f"{name} corrupted: {len(picks)} subjects, {sum(map(len, picks.values()))} slices")
        cohort = sim_cohort(cfg.sim_subjects, cfg.sim_seed, cfg.sim_frames, cfg.image_size)
        sim = sim_quality_makers(cohort, cfg.sim_per_series)
        makers.update(sim)
        strata.update({s: "simulator" for s in sim})
        notes.append(f"simulator: {len(sim)} subjects, {sum(len(v) for v in sim.values())} slices")
        subjects = sorted(makers)
        return TaskData(
            subjects, [strata[s] for s in subjects], subject_factory(makers, self._dataset), "; ".join(notes)
        )

    def synthetic_data(self, num_subjects: int = 4, image_size: int = 32) -> TaskData:
        """Tiny simulated cohort slices plus phantom slices corrupted to each grade."""
        cohort = sim_cohort(num_subjects, 0, 3, image_size, synthetic=True)
        makers = sim_quality_makers(cohort, 1)
        rng = np.random.default_rng(0)
        for i in range(num_subjects):
            subject = f"phantom{i:02d}"
            slices = [phantom_slice(rng, image_size) for _ in GRADES]
            makers[subject] = [
                functools.partial(corrupted_item, s["image"], s["mask"], g, 1.5, subject, 0, j)
                for j, (s, g) in enumerate(zip(slices, cycled_grades(subject, len(slices)), strict=True))
            ]
        subjects = sorted(makers)
        strata = ["simulator" if s.startswith("sim") else "phantom" for s in subjects]
        return TaskData(subjects, strata, subject_factory(makers, self._dataset), "tiny simulator + phantom")
