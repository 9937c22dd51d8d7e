"""Image-level classification over real datasets (where found) plus the simulated cohort.

``sequence-cls``, ``view-cls`` and ``quality-cls`` share everything but what an item is: each real
dataset is read at the task's image size (missing datasets are skipped and named in the data
description), a few slices per patient are picked, the simulated cohort adds its subjects, and
subjects are stratified by source. A task declares its :class:`RealSource` list and says how a
patient's picked slices and a simulated subject become items.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

from cmrfm.data.cache import PreparedCache
from cmrfm.errors import InputError
from cmrfm.tasks.base import TaskData
from cmrfm.tasks.items import ItemDataset
from cmrfm.tasks.kinds import ClassificationTask
from cmrfm.tasks.mixed import ItemMaker, real_slices, subject_factory
from cmrfm.tasks.simcohort import SimSubject, sim_cohort

#: Simulated subjects, frames and slices per subject of the tiny cohort behind ``synthetic_data``.
SYNTHETIC_FRAMES = 3


@dataclass(frozen=True)
class RealSource:
    """A real dataset a mixed task reads.

    Attributes:
        name: Adapter name (``acdc``, ``sunnybrook``, ``emidec``); the task config's
            ``<name>_root`` says where it is (default locations when empty).
        extra: Extra ``cmrfm data prepare`` settings (e.g. ``all_frames=true``).
        where: Manifest filter (e.g. ``{"labelled": True}``).
    """

    name: str
    extra: tuple[str, ...] = ()
    where: dict[str, Any] = field(default_factory=dict)


class MixedSourceClassification(ClassificationTask):
    """Base of image-level classification tasks fed by real datasets and the simulator.

    The config needs ``real``, ``real_per_subject``, ``sim_subjects``, ``sim_seed``, ``sim_frames``,
    ``augment``, ``image_size`` and a ``<name>_root`` per real source.
    """

    #: Real datasets read when ``config.real`` is true.
    real_sources: tuple[RealSource, ...] = ()
    #: Word describing the real slices in the data description (e.g. ``"SAX"``).
    real_note: str = ""
    #: Simulated slices per subject (per class or series) in the tiny synthetic cohort.
    synthetic_sim_count: int = 1

    def real_study_makers(
        self, source: str, cache: PreparedCache, study: str, positions: list[int]
    ) -> list[ItemMaker]:
        """Item makers of one real patient's picked cache positions (empty to skip it)."""
        raise NotImplementedError

    def sim_makers(self, cohort: Sequence[SimSubject], count: int) -> dict[str, list[ItemMaker]]:
        """Item makers per simulated subject, ``count`` slices per class or series."""
        raise NotImplementedError

    @property
    def sim_count(self) -> int:
        """Simulated slices per subject (per class or series) at the real budget."""
        raise NotImplementedError

    def sim_overrides(self) -> tuple[str, ...]:
        """Extra simulator ``key=value`` settings of the task's cohort (none by default)."""
        return ()

    def synthetic_extra(self, num_subjects: int, image_size: int) -> dict[str, list[ItemMaker]]:
        """Extra phantom subjects for ``synthetic_data`` (none by default)."""
        return {}

    def _dataset(self, makers: Sequence[ItemMaker], train: bool) -> ItemDataset:
        return ItemDataset(makers, train, self.config.augment)

    def _real(self) -> tuple[dict[str, list[ItemMaker]], dict[str, str], list[str]]:
        cfg = self.config
        makers: dict[str, list[ItemMaker]] = {}
        strata: dict[str, str] = {}
        notes = []
        for source in self.real_sources:
            root = getattr(cfg, f"{source.name}_root", "")
            try:
                cache, picks = real_slices(
                    source.name, root, "", cfg.image_size, cfg.real_per_subject, source.extra, **source.where
                )
            except InputError as err:
                notes.append(f"{source.name} skipped ({err.reason})")
                continue
            count = 0
            for study, positions in picks.items():
                study_makers = self.real_study_makers(source.name, cache, study, positions)
                if study_makers:
                    makers.setdefault(study, []).extend(study_makers)
                    strata[study] = source.name
                    count += len(study_makers)
            label = f"{source.name} {self.real_note}".strip()
            notes.append(f"{label}: {len(picks)} subjects, {count} slices")
        return makers, strata, notes

    def load_data(self) -> TaskData:
        """Real slices (datasets found) plus the simulated cohort, stratified by source."""
        cfg = self.config
        makers, strata, notes = self._real() if cfg.real else ({}, {}, [])
        cohort = sim_cohort(
            cfg.sim_subjects, cfg.sim_seed, cfg.sim_frames, cfg.image_size, overrides=self.sim_overrides()
        )
        sim = self.sim_makers(cohort, self.sim_count)
        makers.update(sim)
        strata.update({s: "simulator" for s in sim})
        notes.append(f"simulator: {len(sim)} subjects, {sum(len(v) for v in sim.values())} slices")
        subjects = sorted(makers)
        return TaskData(
            subjects, [strata[s] for s in subjects], subject_factory(makers, self._dataset), "; ".join(notes)
        )

    def synthetic_data(self, num_subjects: int = 4, image_size: int = 32) -> TaskData:
        """The tiny simulated cohort (plus any phantom subjects the task adds)."""
        cohort = sim_cohort(num_subjects, 0, SYNTHETIC_FRAMES, image_size, synthetic=True)
        makers = self.sim_makers(cohort, self.synthetic_sim_count)
        sim = set(makers)
        extra = self.synthetic_extra(num_subjects, image_size)
        makers.update(extra)
        subjects = sorted(makers)
        strata = ["simulator" if s in sim else "phantom" for s in subjects]
        description = "tiny simulator" + (" + phantom" if extra else "")
        return TaskData(subjects, strata, subject_factory(makers, self._dataset), description)
