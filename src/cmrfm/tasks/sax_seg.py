"""``sax-seg``: cine short-axis segmentation of LV blood pool, LV myocardium and RV blood pool (ACDC)."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from cmrfm.constants import LABEL_NAMES, Label, View
from cmrfm.constants import Sequence as MRSequence
from cmrfm.data.preprocess import PreprocessRecord
from cmrfm.tasks.augment import AugmentConfig
from cmrfm.tasks.base import TaskData, TaskInfo, register_task
from cmrfm.tasks.items import ItemDataset, phantom_slice
from cmrfm.tasks.kinds import SegmentationConfig, SegmentationTask
from cmrfm.tasks.mixed import ChainItems, ItemMaker, LazyItems
from cmrfm.tasks.simcohort import sim_cohort, sim_seg_makers
from cmrfm.tasks.sources import CacheItems, prepared_cache, study_strata


@dataclass
class SaxSegConfig(SegmentationConfig):
    """``sax-seg`` data settings.

    Attributes:
        root: ACDC training folder (default locations when empty).
        cache: A prepared ACDC cache (made on first use when empty).
        augment: Augmentation ranges for training items.
        sim_subjects: Simulated subjects whose cine SAX slices join training (never evaluation;
            0 = ACDC only). Widens the scanners, contrasts and geometries the head has seen.
        sim_seed: Simulated cohort seed.
        sim_frames: Cine frames per cycle in the simulator (shared cohort setting).
        sim_per_series: Slices kept per simulated (series, frame), evenly spread.
    """

    root: str = ""
    cache: str = ""
    augment: AugmentConfig = field(default_factory=AugmentConfig)
    sim_subjects: int = 0
    sim_seed: int = 0
    sim_frames: int = 6
    sim_per_series: int = 4


def class_lookup(label_ids: Sequence[int]) -> np.ndarray:
    """Table mapping internal label ids to class indices (ids not listed map to background)."""
    table = np.zeros(256, np.int64)
    for index, label in enumerate(label_ids):
        table[label] = index
    return table


SAX_LABELS = (Label.BACKGROUND, Label.LV, Label.MYO, Label.RV)
_SAX_LOOKUP = class_lookup(SAX_LABELS)


def _is_sim_sax_cine(row: dict[str, Any]) -> bool:
    return row["sequence"] == str(MRSequence.CINE) and row["view"] == str(View.SAX)


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
        cfg = self.config
        cache = prepared_cache("acdc", cfg.root, cfg.cache).filter(labelled=True)
        subjects, strata = study_strata(cache, "group")
        description = f"ACDC prepared cache {cache.path} ({len(cache)} slices)"
        sim: dict[str, list[ItemMaker]] = {}
        if cfg.sim_subjects > 0:
            cohort = sim_cohort(cfg.sim_subjects, cfg.sim_seed, cfg.sim_frames, cfg.image_size)
            sim = sim_seg_makers(cohort, _is_sim_sax_cine, _SAX_LOOKUP, cfg.sim_per_series)
            count = sum(len(v) for v in sim.values())
            description += f" + simulated cine SAX for training ({len(sim)} subjects, {count} slices)"

        def make(ids: Sequence[str], train: bool) -> ItemDataset:
            real = CacheItems(cache.subset_studies([i for i in ids if i not in sim]), seg_item)
            simulated = LazyItems([m for i in ids for m in sim.get(i, [])])
            return ItemDataset(ChainItems([real, simulated]), train, cfg.augment)

        return TaskData(subjects, strata, make, description, train_only=sorted(sim))

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
