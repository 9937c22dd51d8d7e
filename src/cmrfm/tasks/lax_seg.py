"""``lax-seg``: cine long-axis segmentation of LV, MYO, RV, LA and RA (simulator 2CH/3CH/4CH).

No real long-axis labels are shared here, so the corpus is the deterministic simulated cohort
(:mod:`cmrfm.tasks.simcohort`): ED, ES and a mid-diastolic frame of each long-axis cine. Each
(series, frame) is one single-slice volume for evaluation. Subjects are stratified by disease group.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from cmrfm.constants import LABEL_NAMES, Label, View
from cmrfm.constants import Sequence as MRSequence
from cmrfm.tasks.augment import AugmentConfig
from cmrfm.tasks.base import TaskData, TaskInfo, register_task
from cmrfm.tasks.items import ItemDataset
from cmrfm.tasks.kinds import SegmentationConfig, SegmentationTask
from cmrfm.tasks.mixed import ItemMaker, subject_factory
from cmrfm.tasks.sax_seg import class_lookup
from cmrfm.tasks.simcohort import SimSubject, sim_cohort, sim_seg_makers

LAX_LABELS = (Label.BACKGROUND, Label.LV, Label.MYO, Label.RV, Label.LA, Label.RA)
_LAX_LOOKUP = class_lookup(LAX_LABELS)
LAX_VIEWS = (str(View.TWO_CH), str(View.THREE_CH), str(View.FOUR_CH))


@dataclass
class LaxSegConfig(SegmentationConfig):
    """``lax-seg`` settings.

    Attributes:
        sim_subjects: Simulated subjects.
        sim_seed: Simulated cohort seed.
        sim_frames: Cine frames per cycle in the simulator.
        views: Long-axis views to include.
        augment: Augmentation ranges.
    """

    sim_subjects: int = 60
    sim_seed: int = 0
    sim_frames: int = 6
    views: tuple[str, ...] = LAX_VIEWS
    augment: AugmentConfig = field(default_factory=AugmentConfig)


def sim_seg_data(
    cohort: Sequence[SimSubject],
    predicate: Any,
    lookup: np.ndarray,
    dataset: Any,
    description: str,
    noun: str,
    per_series: int = 0,
) -> TaskData:
    """TaskData of a simulated segmentation task: the cohort's matching slices, stratified by group."""
    makers = sim_seg_makers(cohort, predicate, lookup, per_series)
    subjects = [s.subject for s in cohort]
    count = sum(len(v) for v in makers.values())
    return TaskData(
        subjects,
        [s.group for s in cohort],
        subject_factory(makers, dataset),
        f"{description}: {len(subjects)} subjects, {count} {noun}",
    )


@register_task
class LaxSeg(SegmentationTask):
    """Cine long-axis segmentation on simulated 2CH/3CH/4CH frames."""

    info = TaskInfo(
        id="lax-seg",
        title="Cine LAX segmentation: LV, MYO, RV, LA, RA",
        kind="segmentation",
        level="image",
        data="simulator (2CH/3CH/4CH cine, ED/ES/mid-diastole)",
        metric="dice_mean",
        classes=tuple(LABEL_NAMES[i] for i in LAX_LABELS),
    )
    config_cls = LaxSegConfig

    def _dataset(self, makers: Sequence[ItemMaker], train: bool) -> ItemDataset:
        return ItemDataset(makers, train, self.config.augment)

    def _predicate(self):
        views = set(self.config.views)
        return lambda r: r["sequence"] == MRSequence.CINE and r["view"] in views

    def _data(self, cohort: Sequence[SimSubject], description: str, per_series: int = 0) -> TaskData:
        return sim_seg_data(
            cohort, self._predicate(), _LAX_LOOKUP, self._dataset, description, "long-axis frames", per_series
        )

    def load_data(self) -> TaskData:
        """The simulated cohort's long-axis cine frames, stratified by disease group."""
        cfg = self.config
        cohort = sim_cohort(cfg.sim_subjects, cfg.sim_seed, cfg.sim_frames, cfg.image_size)
        return self._data(cohort, "simulated cohort")

    def synthetic_data(self, num_subjects: int = 4, image_size: int = 32) -> TaskData:
        """The tiny simulated cohort's long-axis frames."""
        cohort = sim_cohort(num_subjects, 0, 3, image_size, synthetic=True)
        return self._data(cohort, "tiny simulator", per_series=1)
