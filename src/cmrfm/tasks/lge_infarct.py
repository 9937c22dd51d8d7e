"""``lge-infarct``: infarct present or absent per LGE case (EMIDEC N/P), from all its slices."""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Sequence
from dataclasses import dataclass, field

import numpy as np

from cmrfm.tasks.augment import AugmentConfig
from cmrfm.tasks.base import TaskData, TaskInfo, register_task
from cmrfm.tasks.items import ItemDataset
from cmrfm.tasks.kinds import ClassificationConfig, ClassificationTask
from cmrfm.tasks.lge_seg import LgeSeg
from cmrfm.tasks.sources import prepared_cache

CLASSES = ("absent", "present")


@dataclass
class LgeInfarctConfig(ClassificationConfig):
    """``lge-infarct`` settings.

    Attributes:
        root: EMIDEC root (default locations when empty).
        cache: A prepared EMIDEC cache (made on first use when empty).
        max_images: Slices per training item (random subset).
        augment: Augmentation ranges.
    """

    root: str = ""
    cache: str = ""
    max_images: int = 8
    augment: AugmentConfig = field(default_factory=AugmentConfig)


@register_task
class LgeInfarct(ClassificationTask):
    """Infarct yes/no per case, attention-pooled over its LGE slices."""

    info = TaskInfo(
        id="lge-infarct",
        title="LGE pathology: infarct present / absent per case",
        kind="classification",
        level="study",
        data="EMIDEC N/P cases",
        metric="accuracy",
        classes=CLASSES,
    )
    config_cls = LgeInfarctConfig

    def _make(self, items: dict[str, dict]):
        def make(ids: Sequence[str], train: bool) -> ItemDataset:
            return ItemDataset(
                [items[s] for s in ids], train, self.config.augment, max_images=self.config.max_images
            )

        return make

    def load_data(self) -> TaskData:
        """One item per EMIDEC case: all its slices, label from the case name (N/P)."""
        cache = prepared_cache("emidec", self.config.root, self.config.cache)
        slices: dict[str, list[tuple[int, np.ndarray]]] = defaultdict(list)
        labels: dict[str, bool] = {}
        for i in range(len(cache)):
            item = cache[i]
            meta = item["meta"]
            slices[meta["study"]].append((meta["slice"], item["image"]))
            labels[meta["study"]] = bool(meta["infarct"])
        items = {
            s: {
                "images": np.stack([a for _, a in sorted(v, key=lambda r: r[0])]).astype(
                    np.float16
                ),  # (S, H, W)
                "label": int(labels[s]),
                "subject": s,
            }
            for s, v in slices.items()
        }
        subjects = sorted(items)
        strata = [CLASSES[items[s]["label"]] for s in subjects]
        return TaskData(subjects, strata, self._make(items), f"EMIDEC {len(subjects)} cases")

    def synthetic_data(self, num_subjects: int = 4, image_size: int = 32) -> TaskData:
        """Phantom cases built from the ``lge-seg`` phantom (odd cases carry infarct)."""
        seg = LgeSeg().synthetic_data(num_subjects, image_size)
        dataset = seg.make_dataset(seg.subjects, False)
        per_subject: dict[str, list] = defaultdict(list)
        for i in range(len(dataset)):
            item = dataset[i]
            per_subject[item["subject"]].append((item["image"][0].numpy(), bool((item["mask"] == 3).any())))
        items = {
            s: {"images": np.stack([im for im, _ in v]), "label": int(any(f for _, f in v)), "subject": s}
            for s, v in per_subject.items()
        }
        return TaskData(seg.subjects, seg.strata, self._make(items), "synthetic phantom")
