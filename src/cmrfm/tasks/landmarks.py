"""``landmarks``: RV insertion points (SAX, from ACDC labels); mitral hinges and apex (LAX, simulator).

One heatmap per landmark; an item marks which landmarks it carries (SAX items the first two, LAX
items the last three) and the loss and error use only those. LAX items are the 2CH/4CH cine frames
(ED, ES, mid-diastole) of the deterministic simulated cohort (:mod:`cmrfm.tasks.simcohort`), whose
landmarks come from the simulator's continuous model (:func:`cmrfm.simulate.groundtruth.lax_landmarks`)
mapped into item pixels (x = column, y = row); the task trains SAX and LAX together.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from cmrfm.clinical.geometry import rv_insertion_points
from cmrfm.constants import Sequence as MRSequence
from cmrfm.constants import View
from cmrfm.data.preprocess import PreprocessRecord
from cmrfm.tasks.augment import AugmentConfig
from cmrfm.tasks.base import TaskData, TaskInfo, register_task
from cmrfm.tasks.items import ItemDataset, phantom_slice
from cmrfm.tasks.kinds import LandmarkConfig, LandmarkTask
from cmrfm.tasks.simcohort import SimSubject, sim_cohort
from cmrfm.tasks.sources import prepared_cache, study_strata

LANDMARKS = ("rv_insertion_1", "rv_insertion_2", "mitral_hinge_1", "mitral_hinge_2", "lv_apex")
SAX_SLOTS = (0, 1)
LAX_SLOTS = (2, 3, 4)
#: Long-axis views whose simulated frames carry mitral hinges and apex.
LAX_VIEWS = (str(View.TWO_CH), str(View.FOUR_CH))


@dataclass
class LandmarksConfig(LandmarkConfig):
    """``landmarks`` data settings.

    Attributes:
        root: ACDC training folder (default locations when empty).
        cache: A prepared ACDC cache (made on first use when empty).
        augment: Augmentation ranges for training items.
        lax: Add the simulated long-axis items (mitral hinges, apex).
        lax_views: Long-axis views to take them from.
        sim_subjects: Simulated subjects.
        sim_seed: Simulated cohort seed.
        sim_frames: Cine frames per cycle in the simulator.
    """

    root: str = ""
    cache: str = ""
    augment: AugmentConfig = field(default_factory=AugmentConfig)
    lax: bool = True
    lax_views: tuple[str, ...] = LAX_VIEWS
    sim_subjects: int = 60
    sim_seed: int = 0
    sim_frames: int = 6


def sax_landmark_item(
    image: np.ndarray, mask: np.ndarray, spacing: float, subject: str
) -> dict[str, Any] | None:
    """A SAX landmark item from an image and its label map, or ``None`` without a clear RV junction."""
    points = rv_insertion_points(mask)
    if points is None:
        return None
    landmarks = np.zeros((len(LANDMARKS), 2), np.float32)
    valid = np.zeros(len(LANDMARKS), bool)
    landmarks[list(SAX_SLOTS)] = points
    valid[list(SAX_SLOTS)] = True
    return {
        "image": image,
        "landmarks": landmarks,
        "landmark_valid": valid,
        "spacing": np.array([spacing, spacing], np.float32),
        "subject": subject,
    }


def lax_landmark_item(subject: SimSubject, k: int) -> dict[str, Any]:
    """A simulated long-axis frame with mitral hinges and apex in :data:`LAX_SLOTS`."""
    landmarks = np.zeros((len(LANDMARKS), 2), np.float32)
    valid = np.zeros(len(LANDMARKS), bool)
    ok = subject.landmark_valid[k][: len(LAX_SLOTS)]
    landmarks[list(LAX_SLOTS)] = np.where(ok[:, None], subject.landmarks[k][: len(LAX_SLOTS)], 0.0)
    valid[list(LAX_SLOTS)] = ok
    spacing = subject.rows[k]["spacing"]
    return {
        "image": subject.images[k],
        "landmarks": landmarks,
        "landmark_valid": valid,
        "spacing": np.array(spacing[:2], np.float32),
        "subject": subject.subject,
    }


def lax_items(cohort: list[SimSubject] | tuple[SimSubject, ...], views: tuple[str, ...]) -> dict[str, list]:
    """Per simulated subject: its long-axis cine frames of ``views`` as landmark items."""
    wanted = set(views)
    return {
        s.subject: [
            lax_landmark_item(s, k)
            for k in s.select(lambda r: r["sequence"] == MRSequence.CINE and r["view"] in wanted)
        ]
        for s in cohort
    }


@register_task
class Landmarks(LandmarkTask):
    """RV insertion points (SAX) and mitral hinges + apex (LAX)."""

    info = TaskInfo(
        id="landmarks",
        title="Landmarks: RV insertion points (SAX); mitral hinges and apex (LAX)",
        kind="landmarks",
        level="image",
        data="ACDC-derived RV insertion points + simulator LAX",
        metric="error_mm",
        classes=LANDMARKS,
    )
    config_cls = LandmarksConfig
    interchangeable = ((0, 1), (2, 3))

    def load_data(self) -> TaskData:
        """ACDC ED/ES slices with an RV-LV junction, by patient, plus simulated LAX frames."""
        cache = prepared_cache("acdc", self.config.root, self.config.cache).filter(labelled=True)
        subjects, strata = study_strata(cache, "group")
        by_subject: dict[str, list[dict[str, Any]]] = {s: [] for s in subjects}
        for i in range(len(cache)):
            item = cache[i]
            record: PreprocessRecord = cache.record(i)
            out = sax_landmark_item(item["image"], item["label"], record.out_spacing, item["meta"]["study"])
            if out is not None:
                by_subject[out["subject"]].append(out)

        def make(ids: Sequence[str], train: bool) -> ItemDataset:
            items = [it for s in ids for it in by_subject.get(s, [])]
            return ItemDataset(items, train, self.config.augment)

        count = sum(len(v) for v in by_subject.values())
        description = f"ACDC RV insertion points from labels ({count} slices)"
        if self.config.lax:
            cfg = self.config
            cohort = sim_cohort(cfg.sim_subjects, cfg.sim_seed, cfg.sim_frames, cfg.image_size)
            lax = lax_items(list(cohort), tuple(cfg.lax_views))
            by_subject.update(lax)
            subjects = subjects + list(lax)
            strata = strata + ["simulator"] * len(lax)
            description += f"; simulated LAX {len(lax)} subjects ({sum(map(len, lax.values()))} frames)"
        return TaskData(subjects, strata, make, description)

    def synthetic_data(self, num_subjects: int = 4, image_size: int = 32) -> TaskData:
        """Phantom SAX slices with analytic RV insertion points (+ tiny simulated LAX when ``lax``)."""
        rng = np.random.default_rng(0)
        subjects = [f"phantom{i:02d}" for i in range(num_subjects)]
        items = []
        for subject in subjects:
            for _ in range(4):
                s = phantom_slice(rng, image_size)
                item = sax_landmark_item(s["image"], s["mask"], 1.5, subject)
                if item is not None:
                    items.append(item)

        strata = ["x"] * num_subjects
        if self.config.lax:
            lax = lax_items(
                sim_cohort(num_subjects, 0, 3, image_size, synthetic=True), tuple(self.config.lax_views)
            )
            items += [it for v in lax.values() for it in v]
            subjects, strata = subjects + list(lax), strata + ["simulator"] * len(lax)

        def make(ids: Sequence[str], train: bool) -> ItemDataset:
            return ItemDataset([it for it in items if it["subject"] in set(ids)], train, self.config.augment)

        return TaskData(subjects, strata, make, "synthetic phantom")
