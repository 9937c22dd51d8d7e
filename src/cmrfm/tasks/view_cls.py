"""``view-cls``: cine view classification (SAX, 2CH, 3CH, 4CH).

Long-axis views come from the simulated cohort (:mod:`cmrfm.tasks.simcohort`, ED/ES/mid-diastolic
frames); short-axis cine from the simulator and, where found, real ACDC and Sunnybrook SAX slices.
Subjects are patients and simulated subjects, stratified by source.
"""

from __future__ import annotations

import functools
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

from cmrfm.constants import Sequence as MRSequence
from cmrfm.constants import View
from cmrfm.data.cache import PreparedCache
from cmrfm.tasks.augment import AugmentConfig
from cmrfm.tasks.base import TaskInfo, register_task
from cmrfm.tasks.kinds import ClassificationConfig
from cmrfm.tasks.mixed import ItemMaker, spread
from cmrfm.tasks.mixed_cls import MixedSourceClassification, RealSource
from cmrfm.tasks.simcohort import SimSubject

VIEWS = (View.SAX, View.TWO_CH, View.THREE_CH, View.FOUR_CH)
CLASSES = tuple(str(v) for v in VIEWS)
#: Real SAX cine datasets: (adapter, extra prepare settings, manifest filter).
REAL_SOURCES = (
    RealSource("acdc", where={"labelled": True}),
    RealSource("sunnybrook", extra=("all_frames=true",)),
)


@dataclass
class ViewClsConfig(ClassificationConfig):
    """``view-cls`` settings.

    Attributes:
        acdc_root: ACDC training folder (default locations when empty).
        sunnybrook_root: Sunnybrook root (default locations when empty).
        real: Include real SAX cine (datasets found; missing ones are skipped and reported).
        real_per_subject: SAX slices per real patient (evenly spread; keeps classes near balance).
        sim_subjects: Simulated subjects. 120 (the shipped head's recipe, 2500 steps).
        sim_seed: Simulated cohort seed.
        sim_frames: Cine frames per cycle in the simulator.
        sim_sax_per_subject: SAX cine slices per simulated subject (each long-axis view gives its
            three kept frames).
        augment: Augmentation ranges. Translations up to 25 % of the crop: analysis classifies a
            series before segmenting it, on a crop whose heart-centre guess can be off by
            20-40 mm, while training crops are centred on the labels.
    """

    acdc_root: str = ""
    sunnybrook_root: str = ""
    real: bool = True
    real_per_subject: int = 2
    sim_subjects: int = 120
    sim_seed: int = 0
    sim_frames: int = 6
    sim_sax_per_subject: int = 3
    augment: AugmentConfig = field(default_factory=lambda: AugmentConfig(translate=0.25))


def _real_item(cache: PreparedCache, position: int, subject: str) -> dict[str, Any]:
    return {"image": cache[position]["image"], "label": CLASSES.index(View.SAX), "subject": subject}


def _sim_item(subject: SimSubject, k: int, label: int) -> dict[str, Any]:
    return {"image": subject.images[k], "label": label, "subject": subject.subject}


def sim_view_makers(cohort: Sequence[SimSubject], sax_per_subject: int) -> dict[str, list[ItemMaker]]:
    """Per simulated subject: cine slices of every view (SAX thinned to ``sax_per_subject``)."""
    out: dict[str, list[ItemMaker]] = {}
    for subject in cohort:
        makers: list[ItemMaker] = []
        for label, view in enumerate(CLASSES):
            chosen = subject.select(lambda r, v=view: r["sequence"] == MRSequence.CINE and r["view"] == v)
            if view == View.SAX:
                chosen = spread(chosen, sax_per_subject)
            makers += [functools.partial(_sim_item, subject, k, label) for k in chosen]
        out[subject.subject] = makers
    return out


@register_task
class ViewCls(MixedSourceClassification):
    """Cine view of a 2D image: SAX, 2CH, 3CH or 4CH."""

    info = TaskInfo(
        id="view-cls",
        title="Cine view classification: SAX, 2CH, 3CH, 4CH",
        kind="classification",
        level="image",
        data="simulator (all views) + ACDC/Sunnybrook SAX cine",
        metric="accuracy",
        classes=CLASSES,
    )
    config_cls = ViewClsConfig
    real_sources = REAL_SOURCES
    real_note = "SAX"

    @property
    def sim_count(self) -> int:
        """Simulated SAX cine slices per subject."""
        return self.config.sim_sax_per_subject

    def real_study_makers(
        self, source: str, cache: PreparedCache, study: str, positions: list[int]
    ) -> list[ItemMaker]:
        """The patient's picked slices, all SAX."""
        return [functools.partial(_real_item, cache, p, study) for p in positions]

    def sim_makers(self, cohort: Sequence[SimSubject], count: int) -> dict[str, list[ItemMaker]]:
        """Cine slices of every view per simulated subject (SAX thinned to ``count``)."""
        return sim_view_makers(cohort, count)
