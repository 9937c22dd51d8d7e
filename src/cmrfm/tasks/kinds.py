"""Shared behaviour of the three task kinds; each clinical task subclasses one and adds its data.

* :class:`SegmentationTask`: UNETR-like decoder, cross-entropy + soft Dice with deep supervision;
  evaluation rebuilds each subject's volumes from its slices and scores Dice/HD95/ASSD in mm.
* :class:`ClassificationTask`: image-level (one image per item) or study-level (a padded set of
  images per item pooled by gated attention, optionally with extra per-study features).
* :class:`LandmarkTask`: heatmaps with soft-argmax, L1 loss in mm, error in mm.
"""

from __future__ import annotations

from collections import defaultdict
from dataclasses import dataclass, field
from typing import Any, ClassVar

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.data import DataLoader, Dataset

from cmrfm import metrics
from cmrfm.errors import ConfigError
from cmrfm.models.baselines import SmallCNN, dynunet_2d
from cmrfm.models.heads import (
    AttentionPool,
    ClassificationHead,
    LandmarkHead,
    LinearDecoder,
    SegmentationDecoder,
    soft_argmax_2d,
)
from cmrfm.models.vit import standardize
from cmrfm.tasks.base import EvalResult, Task, TaskModel, pad_set_collate
from cmrfm.tasks.heartzoom import refine_with_zoom

#: Bootstrap resamples for evaluation intervals.
BOOTSTRAP_RESAMPLES = 1000


@dataclass
class ClassWeighting:
    """Per-class cross-entropy weights and their inference-time correction (segmentation and classification).

    Attributes:
        ce_class_weights: Per-class cross-entropy weights in ``info.classes`` order (background
            first for segmentation; empty = equal); e.g. ``[1, 1, 1, 4, 4]`` makes a missed scar
            pixel cost four times a missed myocardium pixel.
        prior_correction: At inference, subtract ``log(weight)`` from each class's logit. A class
            weighted ``w`` in the cross-entropy is learnt as if it were ``w`` times more frequent,
            so its region grows; the correction (logit adjustment) takes that prior back out and
            leaves the training-time gradient boost in place. Measured on ``lge-seg`` fold 0
            (weights 3 on scar): predicted/true infarct volume 2.15 -> 1.18, same infarct Dice.
    """

    ce_class_weights: list[float] = field(default_factory=list)
    prior_correction: bool = True


class WeightedClassesMixin:
    """Task behaviour for a :class:`ClassWeighting` config: CE weights and the prior correction."""

    def class_weight_tensor(self, logits: torch.Tensor) -> torch.Tensor | None:
        """``(C,)`` float32 weights on ``logits``' device, or None when unweighted.

        Raises:
            ConfigError: Wrong count (names the task's classes) or a non-positive weight.
        """
        weights = self.config.ce_class_weights
        if not weights:
            return None
        num_classes = logits.shape[1]
        if len(weights) != num_classes:
            raise ConfigError(
                f"task_options.ce_class_weights has {len(weights)} values; "
                f"{self.info.id} has {num_classes} classes {list(self.info.classes)}"
            )
        if min(weights) <= 0:
            raise ConfigError(f"task_options.ce_class_weights must be positive, got {weights}")
        return torch.tensor([float(w) for w in weights], dtype=torch.float32, device=logits.device)

    def adjust_outputs(self, outputs: dict[str, torch.Tensor], training: bool) -> dict[str, torch.Tensor]:
        """Outside training, logits minus ``log(ce_class_weights)`` (see ``prior_correction``)."""
        if training or not self.config.prior_correction or not self.config.ce_class_weights:
            return outputs
        logits = outputs["logits"]
        log_prior = torch.log(self.class_weight_tensor(logits))
        log_prior = log_prior.view(1, -1, *([1] * (logits.ndim - 2)))  # (1, C[, 1, 1])
        return {**outputs, "logits": logits - log_prior.to(logits.dtype)}


@dataclass
class SegmentationConfig(ClassWeighting):
    """Loss settings of segmentation tasks.

    Attributes:
        dice_weight: Weight of the soft Dice term.
        ce_weight: Weight of the cross-entropy term.
        deep_supervision: Weight of each coarser decoder stage's loss (0 disables).
        image_size: Side of the square training crops.
        conv_skip_stages: Decoder stages at 1/2, 1/4, ... resolution that also get features of a
            small convolutional pyramid on the image (0 = UNETR's full-resolution image skip only;
            at most log2(patch) - 1). Recorded in the model card, so a model loads with its own.
            On ACDC fold 0 the default 2 raised the held-out Dice from 0.884 to 0.902.
        test_time_flips: Evaluation averages the class probabilities of the image and its
            flips (4 forward passes: :data:`TTA_FLIPS`; ``cmrfm evaluate --tta``).
        dice_per_slice: The soft Dice term is the mean over (slice, class) pairs whose target
            holds the class, instead of one Dice per class over the whole batch (the default).
            Per slice, a small structure counts as much as a large one, as in a per-case Dice
            metric; false positives on slices without the class are left to cross-entropy.
            On EMIDEC folds 0-1 (``lge-seg``) it left the infarct Dice level (0.543 vs 0.542) and
            almost stopped the MVO being drawn (Dice 0.01 vs 0.25 on MVO cases), so it is off.
    """

    dice_weight: float = 1.0
    ce_weight: float = 1.0
    deep_supervision: float = 0.3
    image_size: int = 128
    conv_skip_stages: int = 2
    test_time_flips: bool = False
    dice_per_slice: bool = False


#: Test-time augmentations of segmentation: flips of the (H, W) axes (identity first). On EMIDEC
#: fold 0 (lge-seg) the four views raised the infarct Dice on infarct cases from 0.503 to 0.535
#: (three views without the double flip: 0.527).
TTA_FLIPS: tuple[tuple[int, ...], ...] = ((), (-1,), (-2,), (-2, -1))


@dataclass(frozen=True)
class TestTimeView:
    """One test-time view of a slice batch: flipped along ``flip`` axes, then rolled by ``shift`` px."""

    __test__ = False  # not a pytest test class

    flip: tuple[int, ...] = ()
    shift: int = 0

    def apply(self, x: torch.Tensor) -> torch.Tensor:
        """``(B, C, H, W)`` -> the view."""
        x = torch.flip(x, self.flip) if self.flip else x
        return torch.roll(x, (self.shift, self.shift), (-2, -1)) if self.shift else x

    def invert(self, x: torch.Tensor) -> torch.Tensor:
        """A map computed on the view -> the original pixel grid."""
        x = torch.roll(x, (-self.shift, -self.shift), (-2, -1)) if self.shift else x
        return torch.flip(x, self.flip) if self.flip else x


def _soft_dice(
    logits: torch.Tensor, target: torch.Tensor, dims: tuple[int, ...], eps: float
) -> tuple[torch.Tensor, torch.Tensor]:
    """Soft Dice per class summed over ``dims``, and the target's pixel count over the same dims.

    Args:
        logits: ``(B, C, H, W)`` class scores.
        target: ``(B, H, W)`` class indices.
        dims: Axes of ``(B, C, H, W)`` pooled into one Dice: ``(0, 2, 3)`` per class over the batch,
            ``(2, 3)`` per slice and class.
        eps: Smoothing of the ratio.
    """
    probs = torch.softmax(logits.float(), dim=1)
    onehot = F.one_hot(target, logits.shape[1]).permute(0, 3, 1, 2).float()  # (B, C, H, W)
    inter = (probs * onehot).sum(dims)
    target_sum = onehot.sum(dims)
    return (2 * inter + eps) / (probs.sum(dims) + target_sum + eps), target_sum


def soft_dice_loss(logits: torch.Tensor, target: torch.Tensor, eps: float = 1e-5) -> torch.Tensor:
    """1 − mean soft Dice over foreground classes; ``logits`` ``(B, C, H, W)``, ``target`` ``(B, H, W)``."""
    dice, _ = _soft_dice(logits, target, (0, 2, 3), eps)  # (C,)
    return 1 - dice[1:].mean()


def per_slice_dice_loss(logits: torch.Tensor, target: torch.Tensor, eps: float = 1e-5) -> torch.Tensor:
    """1 − mean soft Dice over the (slice, foreground class) pairs whose target holds the class.

    Args:
        logits: ``(B, C, H, W)`` class scores.
        target: ``(B, H, W)`` class indices.
        eps: Smoothing of the ratio.

    Returns:
        A scalar; 0 when no slice of the batch holds any foreground class.
    """
    dice, target_sum = _soft_dice(logits, target, (2, 3), eps)  # (B, C) each
    present = (target_sum[:, 1:] > 0).float()  # (B, C - 1)
    # masked mean without a data-dependent branch (no graph break under torch.compile)
    return (present * (1 - dice[:, 1:])).sum() / present.sum().clamp(min=1.0)


def _backbone_features(backbone: nn.Module, images: torch.Tensor):
    return backbone.forward_features(standardize(images))


class SegmentationTask(WeightedClassesMixin, Task):
    """Base of the segmentation tasks; ``info.classes`` lists background first.

    Items: ``image`` ``(1, H, W)``, ``mask`` ``(H, W)`` long, ``subject`` str, ``volume`` str (which
    3D volume the slice belongs to, e.g. ``"patient001/ED"``), ``slice`` int, ``spacing`` ``(3,)``
    mm (x, y, slice spacing).
    """

    config_cls = SegmentationConfig
    #: Unions of classes also scored as one structure: name -> class indices (``info.classes`` order).
    composites: ClassVar[dict[str, tuple[int, ...]]] = {}
    #: Study analysis always averages the test-time flips of this task's segmentation (``--tta``
    #: turns them on for every task).
    analysis_flips: ClassVar[bool] = False

    @property
    def input_channels(self) -> int:
        """Image channels the model reads: 1, or a slice and its neighbours (``context_slices``)."""
        return 1 + 2 * int(getattr(self.config, "context_slices", 0) or 0)

    def build_head(self, embed_dim: int, num_levels: int, patch_size: int, linear: bool = False) -> nn.Module:
        """UNETR-like decoder (or the linear probe) with one output channel per class."""
        if linear:
            return LinearDecoder(embed_dim, len(self.info.classes))
        try:
            return SegmentationDecoder(
                embed_dim,
                num_levels,
                patch_size,
                len(self.info.classes),
                in_chans=self.input_channels,
                conv_skip_stages=self.config.conv_skip_stages,
            )
        except ValueError as err:
            raise ConfigError(f"task_options.conv_skip_stages: {err}") from None

    def forward(self, backbone: nn.Module, head: nn.Module, batch: dict[str, Any]) -> dict[str, torch.Tensor]:
        """Final and per-stage logits."""
        image = batch["image"]
        features = _backbone_features(backbone, image)
        out = head(features.levels, standardize(image))
        return {"logits": out.logits, "stage_logits": out.stage_logits}

    def loss(self, outputs: dict[str, torch.Tensor], batch: dict[str, Any]) -> torch.Tensor:
        """CE + soft Dice on the final logits, plus down-weighted deep supervision."""
        cfg = self.config
        target = batch["mask"].long()
        total = self._seg_loss(outputs["logits"], target)
        if cfg.deep_supervision > 0:
            for logits in outputs["stage_logits"][:-1]:
                small = F.interpolate(target[:, None].float(), size=logits.shape[-2:], mode="nearest")
                total = total + cfg.deep_supervision * self._seg_loss(logits, small[:, 0].long())
        return total

    def build_baseline(self, image_size: int) -> nn.Module:
        """MONAI DynUNet (nnU-Net-style 2D) with the same outputs as the ViT model."""
        return SegmentationBaseline(len(self.info.classes), image_size, self.input_channels)

    def _seg_loss(self, logits: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        cfg = self.config
        ce = F.cross_entropy(logits.float(), target, weight=self.class_weight_tensor(logits))
        dice_loss = per_slice_dice_loss if cfg.dice_per_slice else soft_dice_loss
        return cfg.ce_weight * ce + cfg.dice_weight * dice_loss(logits, target)

    @property
    def heart_classes(self) -> tuple[int, ...]:
        """Class indices whose union is the heart (training and inference zoom boxes): the foreground."""
        return tuple(range(1, len(self.info.classes)))

    @property
    def heart_zoom_fill(self) -> float:
        """Fill of the heart-zoom pass (``heart_zoom`` of tasks that have it; 0 = no second pass)."""
        return float(getattr(self.config, "heart_zoom", 0.0) or 0.0)

    def view_probs(self, model: nn.Module, images: torch.Tensor) -> torch.Tensor:
        """``(B, C_in, H, W)`` images -> ``(B, C, H, W)`` class probabilities, mean over test-time views."""
        flips = TTA_FLIPS if self.config.test_time_flips else TTA_FLIPS[:1]
        probs = 0.0
        for view in (TestTimeView(flip=dims) for dims in flips):
            logits = model({"image": view.apply(images)})["logits"]
            probs = probs + view.invert(torch.softmax(logits.float(), dim=1))  # (B, C, H, W)
        return probs / len(flips)

    @torch.no_grad()
    def predict_masks(
        self, model: TaskModel, dataset: Dataset, batch_size: int = 16, keep_probs: bool = False
    ) -> list[dict[str, Any]]:
        """Per item: ``subject``, ``volume``, ``slice``, ``pred``, ``ref``, ``spacing``, ``entropy``.

        With ``keep_probs`` each row also holds ``probs``, the ``(C, H, W)`` float16 class
        probabilities the prediction is the arg-max of (for post-processing studies). A config
        with ``heart_zoom`` > 0 refines each volume by a second pass on its predicted heart
        (:func:`cmrfm.tasks.heartzoom.refine_with_zoom`).
        """
        model.eval()
        loader = DataLoader(dataset, batch_size=batch_size, collate_fn=self.collate)
        fill = self.heart_zoom_fill
        rows: list[dict[str, Any]] = []
        images, held = [], []  # kept only for the heart-zoom pass, which needs whole volumes
        for batch in loader:
            probs = self.view_probs(model, batch["image"]).cpu()  # (B, C, H, W)
            first = len(rows)
            for i in range(len(probs)):
                rows.append(
                    {
                        "subject": batch["subject"][i],
                        "volume": batch["volume"][i],
                        "slice": int(batch["slice"][i]),
                        "ref": batch["mask"][i].numpy().astype(np.uint8),
                        "spacing": batch["spacing"][i].numpy(),
                    }
                )
            if fill > 0:
                images.append(batch["image"])
                held.append(probs)
            else:
                _finish_rows(rows[first:], probs.numpy(), keep_probs)
        if fill > 0 and rows:
            refined = refine_with_zoom(
                lambda x: self.view_probs(model, x).cpu(),
                torch.cat(images),
                torch.cat(held),
                [row["volume"] for row in rows],
                fill,
                self.heart_classes,
            )
            _finish_rows(rows, refined.numpy(), keep_probs)
        return rows

    def evaluate(self, model: TaskModel, dataset: Dataset, batch_size: int = 16) -> EvalResult:
        """Per rebuilt volume: Dice/HD95/ASSD, mL predicted/reference per structure, heart entropy.

        Structures are the classes and the task's :attr:`composites` (scored, not in ``dice_mean``).

        Means over volumes, with bootstrap CIs over subjects for the primary metric.
        """
        rows = self.predict_masks(model, dataset, batch_size)
        volumes: dict[str, list[dict[str, Any]]] = defaultdict(list)
        for row in rows:
            volumes[row["volume"]].append(row)
        structures = {i: name for i, name in enumerate(self.info.classes) if i > 0}
        per_volume = []
        for key, slices in volumes.items():
            slices.sort(key=lambda r: r["slice"])
            pred = np.stack([r["pred"] for r in slices], axis=-1)  # (H, W, Z)
            ref = np.stack([r["ref"] for r in slices], axis=-1)  # (H, W, Z)
            sx, sy, sz = (float(v) for v in slices[0]["spacing"])
            # items are (H, W) = (rows, columns): row spacing is y, column spacing is x
            scores = metrics.segmentation_scores(pred, ref, structures, (sy, sx, sz))
            scores["dice_mean"] = float(np.mean([scores[f"dice_{n}"] for n in structures.values()]))
            for name, members in self.composites.items():
                union = metrics.segmentation_scores(
                    np.isin(pred, members).astype(np.uint8),
                    np.isin(ref, members).astype(np.uint8),
                    {1: name},
                    (sy, sx, sz),
                )
                scores.update(union)
            voxel_ml = sx * sy * sz / 1000.0
            for index, name in structures.items():
                scores[f"ml_pred_{name}"] = float(np.count_nonzero(pred == index)) * voxel_ml
                scores[f"ml_ref_{name}"] = float(np.count_nonzero(ref == index)) * voxel_ml
            entropy = np.stack([r["entropy"] for r in slices], axis=-1)  # (H, W, Z)
            heart_entropy = metrics.mean_heart_entropy(entropy, pred)
            scores["mean_entropy"] = float("nan") if heart_entropy is None else heart_entropy
            per_volume.append({"subject": slices[0]["subject"], "volume": key, **scores})
        return summarise_rows(per_volume, primary="dice_mean")


def _finish_rows(rows: list[dict[str, Any]], probs: np.ndarray, keep_probs: bool) -> None:
    """Sets each row's ``pred``, ``entropy`` (and ``probs``) from ``(N, C, H, W)`` probabilities."""
    pred = probs.argmax(axis=1).astype(np.uint8)
    entropy = metrics.normalised_entropy(probs, axis=1).astype(np.float16)  # (N, H, W)
    for i, row in enumerate(rows):
        row["pred"], row["entropy"] = pred[i], entropy[i]
        if keep_probs:
            row["probs"] = probs[i].astype(np.float16)


def _finite_mean(values: list[float]) -> float:
    finite = [v for v in values if np.isfinite(v)]
    return float(np.mean(finite)) if finite else float("nan")


def summarise_rows(rows: list[dict[str, Any]], primary: str) -> EvalResult:
    """Means of numeric columns over rows, bootstrap CIs over subjects for the primary metric."""
    if not rows:
        return EvalResult(metrics={primary: float("nan")})
    keys = [k for k, v in rows[0].items() if isinstance(v, float | int) and not isinstance(v, bool)]
    result = {k: _finite_mean([r[k] for r in rows]) for k in keys}
    by_subject: dict[str, list[float]] = defaultdict(list)
    for r in rows:
        by_subject[r["subject"]].append(r[primary])
    subject_means = np.array([np.nanmean(v) for v in by_subject.values()])
    _, low, high = metrics.mean_ci(subject_means, n_resamples=BOOTSTRAP_RESAMPLES)
    return EvalResult(metrics=result, intervals={primary: (low, high)}, per_subject=rows)


@dataclass
class ClassificationConfig(ClassWeighting):
    """Classification settings.

    Attributes:
        label_smoothing: Cross-entropy label smoothing.
        dropout: Dropout before the classifier.
        image_size: Side of the square input crops.
        kappa_weights: Cohen's kappa weighting (``"quadratic"`` for ordinal grades).
    """

    label_smoothing: float = 0.1
    dropout: float = 0.1
    image_size: int = 128
    kappa_weights: str | None = None


class StudyClassifier(nn.Module):
    """Attention pooling over per-image embeddings (+ optional study features) -> logits.

    Study features pass a non-affine batch normalisation first (running statistics from training,
    kept in the weights), so features of different units and scales need no hand-made scaling.

    Args:
        in_dim: Width of each image embedding (0: features only, images are ignored).
        num_classes: Output classes.
        num_features: Length of the optional per-study feature vector.
        dropout: Dropout before the classifier.
        feature_hidden: Width of the hidden layer the normalised features pass (0: none, so on
            features alone the classifier is multinomial logistic regression).
    """

    def __init__(
        self,
        in_dim: int,
        num_classes: int,
        num_features: int = 0,
        dropout: float = 0.1,
        feature_hidden: int = 64,
    ) -> None:
        super().__init__()
        if in_dim <= 0 and num_features <= 0:
            raise ValueError("a study classifier needs image embeddings, features or both")
        self.in_dim = in_dim
        self.norm = nn.LayerNorm(in_dim) if in_dim else None
        self.pool = AttentionPool(in_dim) if in_dim else None
        self.features = None
        feature_dim = 0
        if num_features and feature_hidden > 0:
            self.features = nn.Sequential(
                nn.BatchNorm1d(num_features, affine=False), nn.Linear(num_features, feature_hidden), nn.GELU()
            )
            feature_dim = feature_hidden
        elif num_features:
            self.features = nn.Sequential(nn.BatchNorm1d(num_features, affine=False))
            feature_dim = num_features
        self.drop = nn.Dropout(dropout)
        self.fc = nn.Linear(in_dim + feature_dim, num_classes)

    def forward(
        self, embeddings: torch.Tensor | None, mask: torch.Tensor, features: torch.Tensor | None = None
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """``(B, S, 2D)`` embeddings, ``(B, S)`` mask -> logits ``(B, K)`` and attention ``(B, S)``."""
        parts = []
        if self.pool is not None:
            pooled, weights = self.pool(self.norm(embeddings), mask)
            parts.append(pooled)
        else:  # features only: every image weighs the same
            weights = mask.float() / mask.float().sum(dim=1, keepdim=True).clamp(min=1)
        if self.features is not None and features is not None:
            parts.append(self.features(features.float()))
        return self.fc(self.drop(torch.cat(parts, dim=-1))), weights


class ClassificationTask(WeightedClassesMixin, Task):
    """Base of classification tasks; ``info.level`` chooses image- or study-level items.

    Image-level items: ``image`` ``(1, H, W)``, ``label`` int, ``subject``. Study-level items:
    ``images`` ``(S, 1, H, W)``, ``label``, ``subject`` and optionally ``features`` ``(F,)``.
    """

    config_cls = ClassificationConfig
    #: Length of the optional per-study feature vector (study-level tasks).
    num_features: int = 0
    #: Whether study-level predictions look at the images (False: features only, no backbone pass).
    uses_images: bool = True

    def build_head(self, embed_dim: int, num_levels: int, patch_size: int, linear: bool = False) -> nn.Module:
        """Linear head (image level) or attention-pooling head (study level); both suit linear probes."""
        n = len(self.info.classes)
        if self.info.level == "study":
            in_dim = 2 * embed_dim if self.uses_images else 0
            hidden = getattr(self.config, "feature_hidden", 64)
            return StudyClassifier(in_dim, n, self.num_features, self.config.dropout, hidden)
        return ClassificationHead(embed_dim, n, self.config.dropout)

    def build_baseline(self, image_size: int) -> nn.Module:
        """A small residual CNN encoder with the same head structure as the ViT model."""
        return ClassificationBaseline(
            len(self.info.classes), self.info.level, self.num_features, self.config.dropout
        )

    def collate(self, items: list[dict[str, Any]]) -> dict[str, Any]:
        """Pads image sets for study-level tasks."""
        return pad_set_collate(items) if self.info.level == "study" else super().collate(items)

    def forward(self, backbone: nn.Module, head: nn.Module, batch: dict[str, Any]) -> dict[str, torch.Tensor]:
        """Class logits (and attention weights for study-level tasks)."""
        if self.info.level == "image":
            out = _backbone_features(backbone, batch["image"])
            return {"logits": head(out.cls, out.patch_tokens)}
        images, mask = batch["images"], batch["set_mask"]  # (B, S, 1, H, W), (B, S)
        if not self.uses_images:
            logits, weights = head(None, mask, batch.get("features"))
            return {"logits": logits, "attention": weights}
        b, s = mask.shape
        flat = images[mask]  # (M, 1, H, W): real images only
        out = _backbone_features(backbone, flat)
        emb_real = ClassificationHead.embed(out.cls, out.patch_tokens)  # (M, 2D)
        emb = emb_real.new_zeros((b, s, emb_real.shape[-1]))
        emb[mask] = emb_real  # (B, S, 2D)
        logits, weights = head(emb, mask, batch.get("features"))
        return {"logits": logits, "attention": weights}

    def loss(self, outputs: dict[str, torch.Tensor], batch: dict[str, Any]) -> torch.Tensor:
        """Label-smoothed cross-entropy (class-weighted when ``ce_class_weights`` is set)."""
        logits = outputs["logits"].float()
        weight = self.class_weight_tensor(logits)
        return F.cross_entropy(
            logits, batch["label"].long(), weight=weight, label_smoothing=self.config.label_smoothing
        )

    @torch.no_grad()
    def predict_probs(self, model: TaskModel, dataset: Dataset, batch_size: int = 16) -> dict[str, Any]:
        """Class probabilities, labels and subjects over a dataset."""
        model.eval()
        probs, labels, subjects = [], [], []
        for batch in DataLoader(dataset, batch_size=batch_size, collate_fn=self.collate):
            probs.append(torch.softmax(model(batch)["logits"].float(), dim=-1).cpu().numpy())
            labels.append(batch["label"].numpy())
            subjects += list(batch["subject"])
        return {"probs": np.concatenate(probs), "labels": np.concatenate(labels), "subjects": subjects}

    def evaluate(self, model: TaskModel, dataset: Dataset, batch_size: int = 16) -> EvalResult:
        """Accuracy, balanced accuracy, macro-F1, AUROC, kappa; bootstrap CIs over subjects."""
        out = self.predict_probs(model, dataset, batch_size)
        probs, labels, subjects = out["probs"], out["labels"], out["subjects"]
        n = len(self.info.classes)
        scores = metrics.classification_scores(labels, probs, n, self.config.kappa_weights)
        unique = sorted(set(subjects))
        index = {s: [i for i, x in enumerate(subjects) if x == s] for s in unique}

        def stat(name: str):
            def fn(idx: np.ndarray) -> float:
                items = np.concatenate([index[unique[i]] for i in idx])
                return metrics.classification_scores(
                    labels[items], probs[items], n, self.config.kappa_weights
                )[name]

            return fn

        intervals = {}
        for name in ("accuracy", "balanced_accuracy"):
            _, low, high = metrics.bootstrap_ci(stat(name), len(unique), n_resamples=200)
            intervals[name] = (low, high)
        rows = [
            {
                "subject": s,
                "label": int(y),
                "pred": int(p.argmax()),
                **{f"p_{c}": float(v) for c, v in zip(self.info.classes, p, strict=True)},
            }
            for s, y, p in zip(subjects, labels, probs, strict=True)
        ]
        return EvalResult(metrics=scores, intervals=intervals, per_subject=rows)


@dataclass
class LandmarkConfig:
    """Landmark settings.

    Attributes:
        image_size: Side of the square input crops.
        heatmap_weight: Weight of an auxiliary Gaussian-heatmap cross-entropy (sharpens maps).
        sigma_px: Gaussian target width in pixels for that term.
        conv_skip_stages: Convolutional skips of the heatmap decoder (as for segmentation).
    """

    image_size: int = 128
    heatmap_weight: float = 0.1
    sigma_px: float = 2.0
    conv_skip_stages: int = 2


class LandmarkTask(Task):
    """Base of landmark tasks.

    Items: ``image``, ``landmarks`` ``(K, 2)`` (x, y) px, ``landmark_valid`` ``(K,)``, ``spacing``
    ``(2,)`` or ``(3,)`` mm (x, y, ...), ``subject``.
    """

    config_cls = LandmarkConfig
    #: Pairs of landmark indices whose identities may swap (e.g. the two RV insertion points under a
    #: flip): targets are matched to the closer ordering before the loss and the error.
    interchangeable: tuple[tuple[int, int], ...] = ()

    def match_targets(self, coords: torch.Tensor, target: torch.Tensor, valid: torch.Tensor) -> tuple:
        """Swaps each interchangeable target pair where the swapped order is closer to the prediction."""
        target, valid = target.clone(), valid.clone()
        with torch.no_grad():
            for i, j in self.interchangeable:
                keep = (coords[:, i] - target[:, i]).norm(dim=-1) + (coords[:, j] - target[:, j]).norm(dim=-1)
                swap = (coords[:, i] - target[:, j]).norm(dim=-1) + (coords[:, j] - target[:, i]).norm(dim=-1)
                both = valid[:, i] & valid[:, j]
                flip = (swap < keep) & both  # (B,)
                ti, tj = target[flip, i].clone(), target[flip, j].clone()
                target[flip, i], target[flip, j] = tj, ti
        return target, valid

    def build_baseline(self, image_size: int) -> nn.Module:
        """MONAI DynUNet heatmaps with the same soft-argmax read-out."""
        return LandmarkBaseline(len(self.info.classes), image_size)

    def build_head(self, embed_dim: int, num_levels: int, patch_size: int, linear: bool = False) -> nn.Module:
        """Heatmap decoder (or linear probe) with soft-argmax read-out."""
        return LandmarkHead(
            embed_dim,
            num_levels,
            patch_size,
            len(self.info.classes),
            linear=linear,
            conv_skip_stages=self.config.conv_skip_stages,
        )

    def forward(self, backbone: nn.Module, head: nn.Module, batch: dict[str, Any]) -> dict[str, torch.Tensor]:
        """Heatmaps and coordinates (x, y) in pixels."""
        image = batch["image"]
        features = _backbone_features(backbone, image)
        heatmaps, coords = head(features.levels, standardize(image))
        return {"heatmaps": heatmaps, "coords": coords}

    def loss(self, outputs: dict[str, torch.Tensor], batch: dict[str, Any]) -> torch.Tensor:
        """L1 distance in mm over valid landmarks, plus a small heatmap term."""
        target, valid = self.match_targets(
            outputs["coords"].float(), batch["landmarks"].float(), batch["landmark_valid"].bool()
        )  # (B, K, 2), (B, K)
        spacing = batch["spacing"][:, None, :2].float()  # (B, 1, 2)
        diff = (outputs["coords"] - target) * spacing  # (B, K, 2) mm
        l1 = diff.abs().sum(-1)[valid].mean() if valid.any() else diff.sum() * 0
        if self.config.heatmap_weight <= 0 or not valid.any():
            return l1
        heat = outputs["heatmaps"]
        b, k, h, w = heat.shape
        ys = torch.arange(h, dtype=torch.float32)[:, None]
        xs = torch.arange(w, dtype=torch.float32)[None, :]
        g = torch.exp(
            -((xs - target[..., 0, None, None]) ** 2 + (ys - target[..., 1, None, None]) ** 2)
            / (2 * self.config.sigma_px**2)
        )  # (B, K, H, W)
        g = g / g.sum(dim=(-2, -1), keepdim=True).clamp_min(1e-8)
        logp = torch.log_softmax(heat.float().reshape(b, k, h * w), dim=-1).reshape(b, k, h, w)
        ce = -(g * logp).sum(dim=(-2, -1))[valid].mean()
        return l1 + self.config.heatmap_weight * ce

    @torch.no_grad()
    def evaluate(self, model: TaskModel, dataset: Dataset, batch_size: int = 16) -> EvalResult:
        """Error in mm per landmark; mean with bootstrap CI over subjects."""
        model.eval()
        rows = []
        for batch in DataLoader(dataset, batch_size=batch_size, collate_fn=self.collate):
            coords = model(batch)["coords"].float()
            target, valid_t = self.match_targets(
                coords, batch["landmarks"].float(), batch["landmark_valid"].bool()
            )
            spacing = batch["spacing"][:, None, :2].float()
            err = ((coords - target) * spacing).norm(dim=-1).numpy()  # (B, K)
            valid = valid_t.numpy()
            for i in range(err.shape[0]):
                row: dict[str, Any] = {"subject": batch["subject"][i]}
                for j, name in enumerate(self.info.classes):
                    row[f"error_mm_{name}"] = float(err[i, j]) if valid[i, j] else float("nan")
                row["error_mm"] = float(np.nanmean(np.where(valid[i], err[i], np.nan)))
                rows.append(row)
        return summarise_rows(rows, primary="error_mm")


# ------------------------------------------------------------------------------------ baselines


class SegmentationBaseline(nn.Module):
    """DynUNet on the standardised image; ``forward(batch)`` returns what :class:`SegmentationTask` uses."""

    def __init__(self, num_classes: int, image_size: int, in_chans: int = 1) -> None:
        super().__init__()
        self.net = dynunet_2d(num_classes, image_size, in_channels=in_chans)

    def forward(self, batch: dict[str, Any]) -> dict[str, torch.Tensor]:
        """Logits ``(B, C, H, W)`` (a single stage: no deep supervision)."""
        logits = self.net(standardize(batch["image"]))
        return {"logits": logits, "stage_logits": [logits]}


class ClassificationBaseline(nn.Module):
    """SmallCNN embeddings -> linear head (image level) or attention pooling (study level)."""

    def __init__(self, num_classes: int, level: str, num_features: int, dropout: float) -> None:
        super().__init__()
        self.level = level
        self.encoder = SmallCNN()
        dim = self.encoder.out_dim
        if level == "study":
            self.head: nn.Module = StudyClassifier(dim, num_classes, num_features, dropout)
        else:
            self.head = nn.Sequential(nn.Dropout(dropout), nn.Linear(dim, num_classes))

    def forward(self, batch: dict[str, Any]) -> dict[str, torch.Tensor]:
        """Class logits (and attention for study-level items)."""
        if self.level == "image":
            return {"logits": self.head(self.encoder(standardize(batch["image"])))}
        images, mask = batch["images"], batch["set_mask"]  # (B, S, 1, H, W), (B, S)
        emb_real = self.encoder(standardize(images[mask]))  # (M, F)
        emb = emb_real.new_zeros((*mask.shape, emb_real.shape[-1]))
        emb[mask] = emb_real  # (B, S, F)
        logits, weights = self.head(emb, mask, batch.get("features"))
        return {"logits": logits, "attention": weights}


class LandmarkBaseline(nn.Module):
    """DynUNet heatmaps with soft-argmax coordinates."""

    def __init__(self, num_landmarks: int, image_size: int) -> None:
        super().__init__()
        self.net = dynunet_2d(num_landmarks, image_size)

    def forward(self, batch: dict[str, Any]) -> dict[str, torch.Tensor]:
        """Heatmaps ``(B, K, H, W)`` and coordinates ``(B, K, 2)``."""
        heatmaps = self.net(standardize(batch["image"]))
        return {"heatmaps": heatmaps, "coords": soft_argmax_2d(heatmaps)}
