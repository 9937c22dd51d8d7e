"""``mapping-seg``: T1- and T2-map short-axis segmentation of LV blood pool, myocardium and RV.

No real mapping data is shared here, so the corpus is the deterministic simulated cohort
(:mod:`cmrfm.tasks.simcohort`): native T1 and T2 maps of every SAX slice (scar counts as
myocardium, as the simulator labels maps). Each map series is one volume for evaluation.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field

from cmrfm.constants import LABEL_NAMES
from cmrfm.constants import Sequence as MRSequence
from cmrfm.tasks.augment import AugmentConfig
from cmrfm.tasks.base import TaskData, TaskInfo, register_task
from cmrfm.tasks.items import ItemDataset
from cmrfm.tasks.kinds import SegmentationConfig, SegmentationTask
from cmrfm.tasks.lax_seg import sim_seg_data
from cmrfm.tasks.mixed import ItemMaker
from cmrfm.tasks.sax_seg import SAX_LABELS, class_lookup
from cmrfm.tasks.simcohort import SimSubject, sim_cohort

_MAP_LOOKUP = class_lookup(SAX_LABELS)
MAP_SEQUENCES = (str(MRSequence.T1_MAP), str(MRSequence.T2_MAP))


@dataclass
class MappingSegConfig(SegmentationConfig):
    """``mapping-seg`` settings.

    Attributes:
        sim_subjects: Simulated subjects.
        sim_seed: Simulated cohort seed.
        sim_frames: Cine frames per cycle in the simulator (shared cohort setting).
        sequences: Map sequences to include (``t1map``, ``t2map``).
        augment: Augmentation ranges.
    """

    sim_subjects: int = 60
    sim_seed: int = 0
    sim_frames: int = 6
    sequences: tuple[str, ...] = MAP_SEQUENCES
    augment: AugmentConfig = field(default_factory=AugmentConfig)


@register_task
class MappingSeg(SegmentationTask):
    """T1/T2-map SAX segmentation on simulated maps."""

    info = TaskInfo(
        id="mapping-seg",
        title="T1/T2-map SAX segmentation: LV, MYO, RV",
        kind="segmentation",
        level="image",
        data="simulator (native T1 and T2 maps, SAX)",
        metric="dice_mean",
        classes=tuple(LABEL_NAMES[i] for i in SAX_LABELS),
    )
    config_cls = MappingSegConfig

    def _dataset(self, makers: Sequence[ItemMaker], train: bool) -> ItemDataset:
        return ItemDataset(makers, train, self.config.augment)

    def _data(self, cohort: Sequence[SimSubject], description: str, per_series: int = 0) -> TaskData:
        wanted = set(self.config.sequences)
        return sim_seg_data(
            cohort,
            lambda r: r["sequence"] in wanted,
            _MAP_LOOKUP,
            self._dataset,
            description,
            "map slices",
            per_series,
        )

    def load_data(self) -> TaskData:
        """The simulated cohort's T1/T2 map slices, stratified by disease group."""
        cfg = self.config
        return self._data(
            sim_cohort(cfg.sim_subjects, cfg.sim_seed, cfg.sim_frames, cfg.image_size), "simulated cohort"
        )

    def synthetic_data(self, num_subjects: int = 4, image_size: int = 32) -> TaskData:
        """The tiny simulated cohort's map slices."""
        cohort = sim_cohort(num_subjects, 0, 3, image_size, synthetic=True)
        return self._data(cohort, "tiny simulator", per_series=3)
