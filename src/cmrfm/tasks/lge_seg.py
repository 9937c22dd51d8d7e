"""``lge-seg``: LGE short-axis segmentation of LV blood pool, myocardium, infarct and MVO (EMIDEC).

EMIDEC's PNG release carries no pixel spacing; surface distances are then reported per pixel of
the prepared grid (``spacing_known`` is false in the cache) and the model card says so.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any, ClassVar

import numpy as np

from cmrfm.constants import LABEL_NAMES, Label
from cmrfm.data.preprocess import PreprocessRecord
from cmrfm.errors import ConfigError
from cmrfm.tasks.augment import AugmentConfig
from cmrfm.tasks.base import TaskData, TaskInfo, register_task
from cmrfm.tasks.context import CHANNEL_INITS, ContextItems
from cmrfm.tasks.heartzoom import HeartZoomItems
from cmrfm.tasks.items import ItemDataset, phantom_slice
from cmrfm.tasks.kinds import SegmentationConfig, SegmentationTask
from cmrfm.tasks.lesionmix import LESION, LesionMixConfig, LesionMixItems
from cmrfm.tasks.mixed import OversampledItems
from cmrfm.tasks.sax_seg import class_lookup, seg_item
from cmrfm.tasks.sources import CacheItems, prepared_cache, study_strata

LGE_LABELS = (Label.BACKGROUND, Label.LV, Label.MYO, Label.INFARCT, Label.MVO)
_LGE_LOOKUP = class_lookup(LGE_LABELS)


@dataclass
class LgeSegConfig(SegmentationConfig):
    """``lge-seg`` settings.

    Attributes:
        root: EMIDEC root holding ``train``/``trainannot`` (default locations when empty).
        cache: A prepared EMIDEC cache (made on first use when empty).
        augment: Augmentation ranges.
        lesionmix: Probability that a training slice gets LesionMix (lesion-level augmentation:
            move, rescale, re-intensify, remove and populate scar; :mod:`cmrfm.tasks.lesionmix`).
        lesionmix_options: LesionMix ranges.
        lesion_oversample: How often a training slice holding infarct or MVO appears per epoch
            (1 = as often as any slice). Scar covers only a few % of the pixels of the slices
            that hold it; repeating those slices gives the scar classes more gradient.
        heart_zoom: Heart zoom (:mod:`cmrfm.tasks.heartzoom`): the fraction of a second-pass crop
            the heart fills (0 = off). Training zooms ``heart_zoom_prob`` of the slices on their
            volume's manual heart; evaluation (and analysis, from the model card) refines each
            stack by a second pass on its predicted heart.
        heart_zoom_prob: Fraction of training slices zoomed (the rest train the first pass).
        context_slices: Neighbouring slices each side given as extra input channels (2.5D,
            :mod:`cmrfm.tasks.context`; 0 = one slice). A 1-channel model given as ``init`` grows
            the channels as ``context_init`` says: ``zero`` (starts from its own 2D output) or
            ``inflate`` (each channel the 2D weight / channels; :mod:`cmrfm.tasks.context`).
    """

    root: str = ""
    cache: str = ""
    augment: AugmentConfig = field(default_factory=AugmentConfig)
    lesionmix: float = 0.0
    lesionmix_options: LesionMixConfig = field(default_factory=LesionMixConfig)
    lesion_oversample: int = 1
    heart_zoom: float = 0.0
    heart_zoom_prob: float = 0.75
    context_slices: int = 0
    context_init: str = "zero"

    def __post_init__(self) -> None:
        if not 0 <= self.heart_zoom <= 1:
            raise ConfigError(f"task_options.heart_zoom must be in [0, 1] (0 = off), got {self.heart_zoom}")
        if not 0 <= self.heart_zoom_prob <= 1:
            raise ConfigError(f"task_options.heart_zoom_prob must be in [0, 1], got {self.heart_zoom_prob}")
        if self.context_slices < 0:
            raise ConfigError(f"task_options.context_slices must be >= 0, got {self.context_slices}")
        if self.context_init not in CHANNEL_INITS:
            choices = ", ".join(CHANNEL_INITS)
            raise ConfigError(
                f"task_options.context_init must be one of {choices}; got {self.context_init!r}"
            )


def lge_item(item: dict[str, Any], record: PreprocessRecord) -> dict[str, Any]:
    """Cache item -> LGE segmentation item (internal ids mapped to the five classes)."""
    return seg_item(item, record, _LGE_LOOKUP)


@register_task
class LgeSeg(SegmentationTask):
    """LGE SAX segmentation with scar and MVO."""

    info = TaskInfo(
        id="lge-seg",
        title="LGE SAX segmentation: LV, MYO, infarct, MVO",
        kind="segmentation",
        level="image",
        data="EMIDEC (85 cases)",
        metric="dice_infarct",
        classes=tuple(LABEL_NAMES[i] for i in LGE_LABELS),
    )
    config_cls = LgeSegConfig
    #: EMIDEC's and MYOSAIQ's structures: the whole myocardium (healthy, infarct, MVO) and the
    #: whole scar (infarct including its MVO core, as infarct size is reported clinically).
    composites: ClassVar[dict[str, tuple[int, ...]]] = {"myocardium_all": (2, 3, 4), "scar": (3, 4)}
    #: LGE stacks are a few slices (cheap), and on EMIDEC fold 0 the flips raised the infarct Dice of
    #: infarct cases from 0.503 to 0.535 (0.541 with the jitter pass too; a shifted pass alone 0.506).
    analysis_flips: ClassVar[bool] = True

    def _dataset(self, items: Sequence[dict[str, Any]], train: bool) -> ItemDataset:
        """Items and paired augmentation; training items get scar oversampling and LesionMix if set."""
        if self.config.context_slices > 0:
            if self.config.lesionmix > 0:
                raise ConfigError("task_options.lesionmix edits one slice: it cannot go with context_slices")
            items = ContextItems(items, self.config.context_slices)
        if train and self.config.lesion_oversample > 1:
            scar = [i for i in range(len(items)) if np.isin(np.asarray(items[i]["mask"]), LESION).any()]
            items = OversampledItems(items, scar, self.config.lesion_oversample)
        if train and self.config.lesionmix > 0:
            items = LesionMixItems(items, self.config.lesionmix, self.config.lesionmix_options)
        if train and self.config.heart_zoom > 0:
            items = HeartZoomItems(
                items, self.config.heart_zoom_prob, self.config.heart_zoom, self.heart_classes
            )
        return ItemDataset(items, train, self.config.augment)

    def load_data(self) -> TaskData:
        """EMIDEC slices by case, stratified by normal/infarct."""
        cache = prepared_cache("emidec", self.config.root, self.config.cache).filter(labelled=True)
        subjects, strata = study_strata(cache, "infarct")

        def make(ids: Sequence[str], train: bool) -> ItemDataset:
            return self._dataset(CacheItems(cache.subset_studies(ids), lge_item), train)

        return TaskData(subjects, strata, make, f"EMIDEC prepared cache {cache.path} ({len(cache)} slices)")

    def synthetic_data(self, num_subjects: int = 4, image_size: int = 32) -> TaskData:
        """Phantom LGE slices: a bright subendocardial wedge of the myocardium is infarct."""
        rng = np.random.default_rng(0)
        items = []
        subjects = [f"phantom{i:02d}" for i in range(num_subjects)]
        for n, subject in enumerate(subjects):
            for z in range(3):
                s = phantom_slice(rng, image_size)
                mask = s["mask"].copy()
                image = s["image"].copy()
                image[mask == Label.LV] = 0.5  # LGE: blood grey, normal myocardium dark
                image[mask == Label.MYO] = 0.05
                if n % 2:
                    ys, xs = np.nonzero(mask == Label.MYO)
                    wedge = xs > np.median(xs)
                    mask[ys[wedge], xs[wedge]] = Label.INFARCT
                    image[ys[wedge], xs[wedge]] = 1.0
                items.append(
                    {
                        "image": image,
                        "mask": _LGE_LOOKUP[mask],
                        "subject": subject,
                        "volume": subject,
                        "slice": z,
                        "spacing": np.array([1.5, 1.5, 10.0], np.float32),
                    }
                )

        def make(ids: Sequence[str], train: bool) -> ItemDataset:
            return self._dataset([it for it in items if it["subject"] in set(ids)], train)

        return TaskData(subjects, [str(i % 2) for i in range(num_subjects)], make, "synthetic phantom")
