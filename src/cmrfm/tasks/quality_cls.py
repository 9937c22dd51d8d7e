"""``quality-cls``: respiratory-motion artefact grade 1-3 (CMRxMotion scale) of a 2D image.

Two sources, so that real anatomy appears with every grade:

* simulated cine and LGE slices with the grade the simulator acquired them with (maps carry no
  motion artefact in the simulator and are left out);
* real ACDC (cine) slices, and EMIDEC (LGE) slices when asked for, corrupted in k-space with a known grade
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
from cmrfm.errors import ConfigError
from cmrfm.tasks.augment import AugmentConfig
from cmrfm.tasks.base import TaskInfo, register_task
from cmrfm.tasks.items import phantom_slice
from cmrfm.tasks.kinds import ClassificationConfig
from cmrfm.tasks.mixed import ItemMaker, spread
from cmrfm.tasks.mixed_cls import MixedSourceClassification, RealSource
from cmrfm.tasks.motion_artefact import corrupt_motion
from cmrfm.tasks.simcohort import SimSubject

GRADES = (1, 2, 3)
CLASSES = tuple(str(g) for g in GRADES)
#: Sequences with motion artefacts in the simulator.
MAGNITUDE_SEQUENCES = (str(MRSequence.CINE), str(MRSequence.LGE))
#: Real datasets corrupted here: (adapter, manifest filter).
REAL_SOURCES = (RealSource("acdc", where={"labelled": True}), RealSource("emidec"))


@dataclass
class QualityClsConfig(ClassificationConfig):
    """``quality-cls`` settings (quadratic-weighted kappa by default).

    Attributes:
        acdc_root: ACDC training folder (default locations when empty).
        emidec_root: EMIDEC root (default locations when empty).
        real: Include k-space-corrupted real slices (datasets found; missing ones are reported).
        real_datasets: Which real datasets to corrupt (``acdc``, ``emidec``). EMIDEC is left out
            by default: its PNG release has no pixel spacing and its slices are tight crops
            around the heart, so a grade's displacement in mm cannot be set in pixels; its
            "grade 3" slices looked no worse than grade 1 and the models could not tell them
            apart (grade 3 called grade 1 in 17-19 of 33 held-out slices).
        real_per_subject: Slices per real patient (grades cycle over them).
        corrupt_seed: Seed of the real-slice corruptions.
        sim_subjects: Simulated subjects.
        sim_seed: Simulated cohort seed.
        sim_frames: Cine frames per cycle in the simulator.
        sim_per_series: Slices per simulated cine/LGE series (a series has one grade).
        sim_grade_probs: Weights of grades 1, 2, 3 drawn per simulated series. Equal by default:
            the simulator's own default (0.7, 0.2, 0.1) mimics a clinic's mix, which left the
            model three grade-1 examples for every artefact example and it learnt to answer 1.
        augment: Augmentation ranges (no blur: blurring is part of what the grade measures).
    """

    kappa_weights: str | None = "quadratic"
    acdc_root: str = ""
    emidec_root: str = ""
    real: bool = True
    real_datasets: list[str] = field(default_factory=lambda: ["acdc"])
    real_per_subject: int = 6
    corrupt_seed: int = 0
    sim_subjects: int = 60
    sim_seed: int = 0
    sim_frames: int = 6
    sim_per_series: int = 3
    sim_grade_probs: list[float] = field(default_factory=lambda: [1.0, 1.0, 1.0])
    augment: AugmentConfig = field(default_factory=lambda: AugmentConfig(blur_prob=0.0))


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
class QualityCls(MixedSourceClassification):
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
    real_note = "corrupted"

    @property
    def real_sources(self) -> tuple[RealSource, ...]:
        """The configured ``real_datasets`` (unknown names are an error)."""
        known = {source.name: source for source in REAL_SOURCES}
        unknown = sorted(set(self.config.real_datasets) - set(known))
        if unknown:
            raise ConfigError(f"task_options.real_datasets: unknown {unknown}; choose from {sorted(known)}")
        return tuple(known[name] for name in self.config.real_datasets)

    def sim_overrides(self) -> tuple[str, ...]:
        """The grade mix of the simulated series (``sim_grade_probs``)."""
        probs = self.config.sim_grade_probs
        if len(probs) != len(GRADES) or min(probs) < 0 or sum(probs) <= 0:
            raise ConfigError(f"task_options.sim_grade_probs must be three non-negative weights, got {probs}")
        return (f"artefact.grade_probs=[{','.join(str(float(p)) for p in probs)}]",)

    @property
    def sim_count(self) -> int:
        """Simulated slices per cine/LGE series."""
        return self.config.sim_per_series

    def real_study_makers(
        self, source: str, cache: PreparedCache, study: str, positions: list[int]
    ) -> list[ItemMaker]:
        """The patient's slices, corrupted to grades 1, 2, 3 in turn."""
        grades = cycled_grades(study, len(positions))
        seed = self.config.corrupt_seed
        pairs = zip(positions, grades, strict=True)
        return [functools.partial(_real_item, cache, p, g, study, seed) for p, g in pairs]

    def sim_makers(self, cohort: Sequence[SimSubject], count: int) -> dict[str, list[ItemMaker]]:
        """Up to ``count`` slices of each cine/LGE series per simulated subject, graded by the simulator."""
        return sim_quality_makers(cohort, count)

    def synthetic_extra(self, num_subjects: int, image_size: int) -> dict[str, list[ItemMaker]]:
        """Phantom slices corrupted to each grade (real anatomy stands in for the real datasets)."""
        rng = np.random.default_rng(0)
        makers: dict[str, list[ItemMaker]] = {}
        for i in range(num_subjects):
            subject = f"phantom{i:02d}"
            slices = [phantom_slice(rng, image_size) for _ in GRADES]
            makers[subject] = [
                functools.partial(corrupted_item, s["image"], s["mask"], g, 1.5, subject, 0, j)
                for j, (s, g) in enumerate(zip(slices, cycled_grades(subject, len(slices)), strict=True))
            ]
        return makers
