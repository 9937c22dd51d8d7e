"""``lge-infarct``: infarct present or absent per LGE case (EMIDEC N/P), from all its slices.

Two heads (``task_options.head``):

* ``tokens``: attention pooling of the backbone's image embeddings (the generic study classifier).
* ``scar``: a segmentation decoder's scar probabilities, summarised per slice and attention-pooled
  (:class:`~cmrfm.models.heads.MaskEvidenceClassifier`). Started from an ``lge-seg`` model
  (``--init weights/lge-seg.safetensors``: backbone and decoder transfer), it decides from the scar
  the segmentation draws, with the decoder frozen by default so only a few hundred weights train.
  Recipe of the shipped head: ``mode=frozen optim.lr=1e-3 'task_options.ce_class_weights=[3,1]'
  task_options.prior_correction=false`` (classes weighted by inverse frequency and left so: 0.5 is
  then the balanced decision point; benchmarks/RESULTS.md).
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any, Literal

import numpy as np
import torch
from torch import nn

from cmrfm.constants import Label
from cmrfm.errors import ConfigError
from cmrfm.models.heads import MaskEvidenceClassifier, SegmentationDecoder
from cmrfm.models.vit import standardize
from cmrfm.tasks.augment import AugmentConfig
from cmrfm.tasks.base import TaskData, TaskInfo, register_task
from cmrfm.tasks.items import ItemDataset
from cmrfm.tasks.kinds import ClassificationConfig, ClassificationTask
from cmrfm.tasks.lge_seg import LGE_LABELS, LgeSeg
from cmrfm.tasks.sources import prepared_cache

CLASSES = ("absent", "present")
#: Labels that count as scar evidence for ``head=scar``.
SCAR_LABELS = (Label.INFARCT, Label.MVO)


@dataclass
class LgeInfarctConfig(ClassificationConfig):
    """``lge-infarct`` settings.

    Attributes:
        root: EMIDEC root (default locations when empty).
        cache: A prepared EMIDEC cache (made on first use when empty).
        max_images: Slices per training item (random subset).
        augment: Augmentation ranges.
        head: ``tokens`` (pooled image embeddings) or ``scar`` (pooled scar evidence of a
            segmentation decoder; start it from an ``lge-seg`` model).
        freeze_decoder: With ``head=scar``, keep the transferred decoder fixed.
        conv_skip_stages: With ``head=scar``, the decoder's convolutional skips (must match the
            ``lge-seg`` model it starts from).
    """

    root: str = ""
    cache: str = ""
    max_images: int = 8
    augment: AugmentConfig = field(default_factory=AugmentConfig)
    head: Literal["tokens", "scar"] = "tokens"
    freeze_decoder: bool = True
    conv_skip_stages: int = 2


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

    def build_head(self, embed_dim: int, num_levels: int, patch_size: int, linear: bool = False) -> nn.Module:
        """The configured head (see the module docstring)."""
        if self.config.head == "tokens":
            return super().build_head(embed_dim, num_levels, patch_size, linear)
        if self.config.head != "scar":
            raise ConfigError(f"task_options.head must be 'tokens' or 'scar', got {self.config.head!r}")
        if linear:
            raise ConfigError("head=scar has no linear-probe form; use mode=frozen or mode=full")
        decoder = SegmentationDecoder(
            embed_dim, num_levels, patch_size, len(LGE_LABELS), conv_skip_stages=self.config.conv_skip_stages
        )
        scar = tuple(i for i, label in enumerate(LGE_LABELS) if label in SCAR_LABELS)
        myo = tuple(i for i, label in enumerate(LGE_LABELS) if label == Label.MYO)
        return MaskEvidenceClassifier(
            decoder, scar, myo, len(CLASSES), freeze_decoder=self.config.freeze_decoder
        )

    def segmentation_link(self, weights: str, card: dict[str, Any]) -> dict[str, Any]:
        """``head=scar`` started from the ``lge-seg`` ViT model ``weights`` (its backbone and decoder)."""
        if card.get("task") != "lge-seg":
            raise ConfigError(f"{weights}: lge-infarct works from an lge-seg model, not {card.get('task')!r}")
        if (card.get("architecture") or {}).get("name") == "baseline":
            raise ConfigError(
                f"{weights}: head=scar reads a ViT decoder's scar; this lge-seg model is the conventional "
                "baseline (sweep the ViT methods only: --methods pretrained,scratch)"
            )
        seg_config = card.get("task_config") or {}
        if int(seg_config.get("context_slices", 0)) > 0:
            raise ConfigError(
                f"{weights}: head=scar reads single slices; this lge-seg model takes 2.5D context"
            )
        skips = seg_config.get("conv_skip_stages", self.config.conv_skip_stages)
        return {"init": str(weights), "task_options": {"head": "scar", "conv_skip_stages": int(skips)}}

    def forward(self, backbone: nn.Module, head: nn.Module, batch: dict[str, Any]) -> dict[str, torch.Tensor]:
        """Class logits and attention over slices."""
        if self.config.head != "scar":
            return super().forward(backbone, head, batch)
        images, mask = batch["images"], batch["set_mask"]  # (B, S, 1, H, W), (B, S)
        flat = images[mask]  # (M, 1, H, W): real slices only
        features = backbone.forward_features(standardize(flat))
        logits, weights = head(features.levels, standardize(flat), mask)
        return {"logits": logits, "attention": weights}

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
