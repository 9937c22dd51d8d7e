"""``sequence-cls``: which MR sequence an image is (cine, LGE, T1 map, T2 map).

Real slices: ACDC and Sunnybrook cine (SAX), EMIDEC LGE; simulated slices of all four sequences
(cine on SAX and long-axis views, LGE and maps on SAX) from a deterministic simulated cohort
(:mod:`cmrfm.tasks.simcohort`). Every image goes through the same preprocessing (1.5 mm grid, heart
crop, percentile intensity), so the class cannot be read off an intensity scale. Subjects are
patients and simulated subjects, stratified by source.
"""

from __future__ import annotations

import functools
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

from cmrfm.constants import Sequence as MRSequence
from cmrfm.data.cache import PreparedCache
from cmrfm.errors import InputError
from cmrfm.tasks.augment import AugmentConfig
from cmrfm.tasks.base import TaskData, TaskInfo, register_task
from cmrfm.tasks.items import ItemDataset
from cmrfm.tasks.kinds import ClassificationConfig, ClassificationTask
from cmrfm.tasks.mixed import ItemMaker, real_slices, spread, subject_factory
from cmrfm.tasks.simcohort import SimSubject, sim_cohort

SEQUENCES = (MRSequence.CINE, MRSequence.LGE, MRSequence.T1_MAP, MRSequence.T2_MAP)
CLASSES = tuple(str(s) for s in SEQUENCES)
#: Real datasets: (adapter, extra prepare settings, manifest filter).
REAL_SOURCES: tuple[tuple[str, tuple[str, ...], dict[str, Any]], ...] = (
    ("acdc", (), {"labelled": True}),
    ("sunnybrook", ("all_frames=true",), {}),
    ("emidec", (), {}),
)


@dataclass
class SequenceClsConfig(ClassificationConfig):
    """``sequence-cls`` settings.

    Attributes:
        acdc_root: ACDC training folder (default locations when empty).
        sunnybrook_root: Sunnybrook root (default locations when empty).
        emidec_root: EMIDEC root (default locations when empty).
        real: Include the real datasets (those found; missing ones are skipped and reported).
        real_per_subject: Slices per real patient (evenly spread over its slices and frames).
        sim_subjects: Simulated subjects.
        sim_seed: Simulated cohort seed.
        sim_frames: Cine frames per cycle in the simulator.
        sim_per_sequence: Slices per simulated subject and sequence (evenly spread).
        augment: Augmentation ranges.
    """

    acdc_root: str = ""
    sunnybrook_root: str = ""
    emidec_root: str = ""
    real: bool = True
    real_per_subject: int = 6
    sim_subjects: int = 60
    sim_seed: int = 0
    sim_frames: int = 6
    sim_per_sequence: int = 6
    augment: AugmentConfig = field(default_factory=AugmentConfig)


def _real_item(cache: PreparedCache, position: int, label: int, subject: str) -> dict[str, Any]:
    return {"image": cache[position]["image"], "label": label, "subject": subject}


def _sim_item(subject: SimSubject, k: int, label: int) -> dict[str, Any]:
    return {"image": subject.images[k], "label": label, "subject": subject.subject}


def sim_sequence_makers(cohort: Sequence[SimSubject], per_sequence: int) -> dict[str, list[ItemMaker]]:
    """Per simulated subject: up to ``per_sequence`` slices of each of the four sequences."""
    out: dict[str, list[ItemMaker]] = {}
    for subject in cohort:
        makers: list[ItemMaker] = []
        for label, name in enumerate(CLASSES):
            chosen = spread(subject.select(lambda r, n=name: r["sequence"] == n), per_sequence)
            makers += [functools.partial(_sim_item, subject, k, label) for k in chosen]
        out[subject.subject] = makers
    return out


@register_task
class SequenceCls(ClassificationTask):
    """Sequence of a 2D image: cine, LGE, T1 map or T2 map."""

    info = TaskInfo(
        id="sequence-cls",
        title="Sequence classification: cine, LGE, T1 map, T2 map",
        kind="classification",
        level="image",
        data="ACDC + Sunnybrook cine, EMIDEC LGE (real) + simulator (all four)",
        metric="accuracy",
        classes=CLASSES,
    )
    config_cls = SequenceClsConfig

    def _dataset(self, makers: Sequence[ItemMaker], train: bool) -> ItemDataset:
        return ItemDataset(makers, train, self.config.augment)

    def _real(self) -> tuple[dict[str, list[ItemMaker]], dict[str, str], list[str]]:
        cfg = self.config
        roots = {"acdc": cfg.acdc_root, "sunnybrook": cfg.sunnybrook_root, "emidec": cfg.emidec_root}
        makers: dict[str, list[ItemMaker]] = {}
        strata: dict[str, str] = {}
        notes = []
        for name, extra, where in REAL_SOURCES:
            try:
                cache, picks = real_slices(
                    name, roots[name], "", cfg.image_size, cfg.real_per_subject, extra, **where
                )
            except InputError as err:
                notes.append(f"{name} skipped ({err.reason})")
                continue
            count = 0
            for study, positions in picks.items():
                for pos in positions:
                    sequence = cache.rows[pos]["sequence"]
                    if sequence not in CLASSES:
                        continue
                    label = CLASSES.index(sequence)
                    makers.setdefault(study, []).append(
                        functools.partial(_real_item, cache, pos, label, study)
                    )
                    count += 1
                strata[study] = name
            notes.append(f"{name}: {len(picks)} subjects, {count} slices")
        return makers, strata, notes

    def load_data(self) -> TaskData:
        """Real slices (where found) plus the simulated cohort, stratified by source."""
        cfg = self.config
        makers, strata, notes = self._real() if cfg.real else ({}, {}, [])
        cohort = sim_cohort(cfg.sim_subjects, cfg.sim_seed, cfg.sim_frames, cfg.image_size)
        sim = sim_sequence_makers(cohort, cfg.sim_per_sequence)
        makers.update(sim)
        strata.update({s: "simulator" for s in sim})
        notes.append(f"simulator: {len(sim)} subjects, {sum(len(v) for v in sim.values())} slices")
        subjects = sorted(makers)
        return TaskData(
            subjects, [strata[s] for s in subjects], subject_factory(makers, self._dataset), "; ".join(notes)
        )

    def synthetic_data(self, num_subjects: int = 4, image_size: int = 32) -> TaskData:
        """The tiny simulated cohort (all four sequences per subject)."""
        cohort = sim_cohort(num_subjects, 0, 3, image_size, synthetic=True)
        makers = sim_sequence_makers(cohort, 2)
        subjects = sorted(makers)
        return TaskData(
            subjects, ["simulator"] * len(subjects), subject_factory(makers, self._dataset), "tiny simulator"
        )
