"""``sax-seg``: cine short-axis segmentation of LV blood pool, LV myocardium and RV blood pool (ACDC)."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from cmrfm.constants import LABEL_NAMES, Label
from cmrfm.data.preprocess import PreprocessRecord
from cmrfm.tasks.augment import AugmentConfig
from cmrfm.tasks.base import TaskData, TaskInfo, register_task
from cmrfm.tasks.items import ItemDataset, phantom_slice
from cmrfm.tasks.kinds import SegmentationConfig, SegmentationTask
from cmrfm.tasks.sources import CacheItems, prepared_cache, study_strata


@dataclass
class SaxSegConfig(SegmentationConfig):
    """``sax-seg`` data settings.

    Attributes:
        root: ACDC training folder (default locations when empty).
        cache: A prepared ACDC cache (made on first use when empty).
        augment: Augmentation ranges for training items.
    """

    root: str = ""
    cache: str = ""
    augment: AugmentConfig = field(default_factory=AugmentConfig)


def class_lookup(label_ids: Sequence[int]) -> np.ndarray:
    """Table mapping internal label ids to class indices (ids not listed map to background)."""
    table = np.zeros(256, np.int64)
    for index, label in enumerate(label_ids):
        table[label] = index
    return table


SAX_LABELS = (Label.BACKGROUND, Label.LV, Label.MYO, Label.RV)
_SAX_LOOKUP = class_lookup(SAX_LABELS)


def seg_item(
    item: dict[str, Any], record: PreprocessRecord, lookup: np.ndarray = _SAX_LOOKUP
) -> dict[str, Any]:
    """Cache item -> segmentation item (image, mask as class indices, subject, volume, slice, spacing)."""
    meta = item["meta"]
    phase = meta["phase"] if meta["phase"] not in ("", "na", "other") else f"frame{meta['frame']}"
    return {
        "image": item["image"],
        "mask": lookup[item["label"]],
        "subject": meta["study"],
        "volume": f"{meta['study']}/{meta['series']}/{phase}",
        "slice": meta["slice"],
        "spacing": np.array([record.out_spacing, record.out_spacing, meta["spacing_z"]], np.float32),
    }


@register_task
class SaxSeg(SegmentationTask):
    """Cine SAX segmentation on ACDC ED and ES frames."""

    info = TaskInfo(
        id="sax-seg",
        title="Cine SAX segmentation: LV, MYO, RV",
        kind="segmentation",
        level="image",
        data="ACDC (100 patients, ED+ES)",
        metric="dice_mean",
        classes=tuple(LABEL_NAMES[i] for i in SAX_LABELS),
    )
    config_cls = SaxSegConfig

    def load_data(self) -> TaskData:
        """ACDC labelled ED/ES slices, subjects stratified by disease group."""
        cache = prepared_cache("acdc", self.config.root, self.config.cache).filter(labelled=True)
        subjects, strata = study_strata(cache, "group")

        def make(ids: Sequence[str], train: bool) -> ItemDataset:
            return ItemDataset(CacheItems(cache.subset_studies(ids), seg_item), train, self.config.augment)

        return TaskData(subjects, strata, make, f"ACDC prepared cache {cache.path} ({len(cache)} slices)")

    def synthetic_data(self, num_subjects: int = 4, image_size: int = 32) -> TaskData:
        """Phantom SAX stacks (3 slices per subject, ED and ES)."""
        rng = np.random.default_rng(0)
        items = []
        subjects = [f"phantom{i:02d}" for i in range(num_subjects)]
        for subject in subjects:
            for phase, scale in (("ED", 1.0), ("ES", 0.7)):
                for z in range(3):
                    s = phantom_slice(rng, image_size, lv_radius=image_size * 0.18 * scale * (1 - 0.15 * z))
                    items.append(
                        {
                            "image": s["image"],
                            "mask": s["mask"].astype(np.int64),
                            "subject": subject,
                            "volume": f"{subject}/{phase}",
                            "slice": z,
                            "spacing": np.array([1.5, 1.5, 8.0], np.float32),
                        }
                    )

        def make(ids: Sequence[str], train: bool) -> ItemDataset:
            return ItemDataset([it for it in items if it["subject"] in set(ids)], train, self.config.augment)

        strata = ["NOR" if i % 2 else "DCM" for i in range(num_subjects)]
        return TaskData(subjects, strata, make, "synthetic phantom")
