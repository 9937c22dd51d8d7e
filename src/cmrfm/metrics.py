"""Evaluation metrics: overlap, surface distances (mm), classification, landmarks, bootstrap CIs.

Conventions for empty structures (documented because they change means): Dice is 1 when both
prediction and reference are empty and 0 when exactly one is; surface distances are NaN when
either side is empty (they are undefined) and callers average with ``nanmean``.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import numpy as np
from scipy import ndimage

# ----------------------------------------------------------------------------- segmentation


def dice(pred: np.ndarray, ref: np.ndarray, label: int | Sequence[int]) -> float:
    """Dice coefficient of one label (or a union of labels) between two label maps."""
    labels = [label] if isinstance(label, int | np.integer) else list(label)
    p = np.isin(pred, labels)
    r = np.isin(ref, labels)
    total = p.sum() + r.sum()
    if total == 0:
        return 1.0
    return float(2.0 * np.logical_and(p, r).sum() / total)


def _surface(mask: np.ndarray) -> np.ndarray:
    """Boolean map of the mask's boundary voxels (mask minus its erosion)."""
    eroded = ndimage.binary_erosion(mask, structure=ndimage.generate_binary_structure(mask.ndim, 1))
    return mask & ~eroded


def surface_distances(pred: np.ndarray, ref: np.ndarray, spacing: Sequence[float]) -> np.ndarray:
    """Symmetric surface distances (mm): every boundary voxel of each mask to the other's boundary.

    Args:
        pred: Boolean mask.
        ref: Boolean mask of the same shape.
        spacing: Voxel size per axis in mm.

    Returns:
        1D array of distances; empty when either mask is empty.
    """
    pred = pred.astype(bool)
    ref = ref.astype(bool)
    if not pred.any() or not ref.any():
        return np.empty(0)
    sp, sr = _surface(pred), _surface(ref)
    dist_to_ref = ndimage.distance_transform_edt(~sr, sampling=spacing)
    dist_to_pred = ndimage.distance_transform_edt(~sp, sampling=spacing)
    return np.concatenate([dist_to_ref[sp], dist_to_pred[sr]])


def hd95(pred: np.ndarray, ref: np.ndarray, label: int, spacing: Sequence[float]) -> float:
    """95th-percentile symmetric Hausdorff distance of one label in mm (NaN if either is empty)."""
    d = surface_distances(pred == label, ref == label, spacing)
    return float(np.percentile(d, 95)) if d.size else float("nan")


def assd(pred: np.ndarray, ref: np.ndarray, label: int, spacing: Sequence[float]) -> float:
    """Average symmetric surface distance of one label in mm (NaN if either is empty)."""
    d = surface_distances(pred == label, ref == label, spacing)
    return float(d.mean()) if d.size else float("nan")


def segmentation_scores(
    pred: np.ndarray, ref: np.ndarray, labels: dict[int, str], spacing: Sequence[float]
) -> dict[str, float]:
    """Dice, HD95 and ASSD for each named label, keys like ``dice_LV``, ``hd95_LV``."""
    out: dict[str, float] = {}
    for label_id, name in labels.items():
        out[f"dice_{name}"] = dice(pred, ref, label_id)
        out[f"hd95_{name}"] = hd95(pred, ref, label_id, spacing)
        out[f"assd_{name}"] = assd(pred, ref, label_id, spacing)
    return out


# --------------------------------------------------------------------------- classification


#: Dilation (pixels) of the predicted heart defining where predictive entropy is averaged.
HEART_MARGIN_PX = 3
#: The out-of-distribution entropy threshold is this multiple of the largest held-out value.
OOD_ENTROPY_MARGIN = 1.2


def normalised_entropy(probs: np.ndarray, axis: int = 1) -> np.ndarray:
    """Predictive entropy of class probabilities along ``axis``, divided by log(C) (in [0, 1])."""
    p = np.clip(probs, 1e-8, 1.0)
    return -(p * np.log(p)).sum(axis=axis) / np.log(probs.shape[axis])


def mean_heart_entropy(
    entropy: np.ndarray, labels: np.ndarray, margin_px: int = HEART_MARGIN_PX
) -> float | None:
    """Mean of ``entropy`` over the predicted heart (``labels > 0``, dilated by ``margin_px`` in 3D).

    Both arrays are one volume ``(H, W, Z)``. The out-of-distribution statistic of study analysis;
    fine-tuning measures it on held-out volumes to calibrate the threshold. None when no heart.
    """
    heart = np.asarray(labels) > 0
    if not heart.any():
        return None
    heart = ndimage.binary_dilation(heart, iterations=margin_px)
    return float(np.asarray(entropy, np.float32)[heart].mean())


def entropy_threshold(values: Sequence[float]) -> dict[str, float | str] | None:
    """A model card ``ood`` entry from held-out mean heart entropies (None without values)."""
    finite = np.array([v for v in values if v is not None and np.isfinite(v)], float)
    if finite.size == 0:
        return None
    return {
        "entropy_max": round(float(OOD_ENTROPY_MARGIN * finite.max()), 4),
        "calibration": (
            f"{OOD_ENTROPY_MARGIN} x the largest mean predictive entropy over the predicted heart of "
            f"{finite.size} held-out volumes (min {finite.min():.3f}, median {np.median(finite):.3f}, "
            f"max {finite.max():.3f}), measured at the end of fine-tuning"
        ),
    }


def confusion_matrix(y_true: Sequence[int], y_pred: Sequence[int], num_classes: int) -> np.ndarray:
    """Counts ``(num_classes, num_classes)``, rows = truth, columns = prediction."""
    cm = np.zeros((num_classes, num_classes), dtype=np.int64)
    np.add.at(cm, (np.asarray(y_true, int), np.asarray(y_pred, int)), 1)
    return cm


def accuracy(y_true: Sequence[int], y_pred: Sequence[int]) -> float:
    """Fraction of correct predictions."""
    return float(np.mean(np.asarray(y_true) == np.asarray(y_pred)))


def balanced_accuracy(y_true: Sequence[int], y_pred: Sequence[int], num_classes: int) -> float:
    """Mean per-class recall over the classes present in ``y_true``."""
    cm = confusion_matrix(y_true, y_pred, num_classes)
    support = cm.sum(axis=1)
    present = support > 0
    return float(np.mean(np.diag(cm)[present] / support[present]))


def macro_f1(y_true: Sequence[int], y_pred: Sequence[int], num_classes: int) -> float:
    """Unweighted mean F1 over classes present in the truth or the prediction."""
    cm = confusion_matrix(y_true, y_pred, num_classes)
    tp = np.diag(cm).astype(float)
    fp = cm.sum(axis=0) - tp
    fn = cm.sum(axis=1) - tp
    used = (tp + fp + fn) > 0
    f1 = np.divide(2 * tp, 2 * tp + fp + fn, out=np.zeros_like(tp), where=used)
    return float(f1[used].mean())


def cohen_kappa(
    y_true: Sequence[int], y_pred: Sequence[int], num_classes: int, weights: str | None = None
) -> float:
    """Cohen's kappa; ``weights="quadratic"`` for ordinal grades (e.g. motion quality 1-3)."""
    cm = confusion_matrix(y_true, y_pred, num_classes).astype(float)
    n = cm.sum()
    expected = np.outer(cm.sum(axis=1), cm.sum(axis=0)) / n
    i, j = np.indices(cm.shape)
    if weights is None:
        w = (i != j).astype(float)
    elif weights == "linear":
        w = np.abs(i - j) / max(num_classes - 1, 1)
    elif weights == "quadratic":
        w = ((i - j) / max(num_classes - 1, 1)) ** 2
    else:
        raise ValueError(f"unknown kappa weights {weights!r}")
    denom = (w * expected).sum()
    return 1.0 if denom == 0 else float(1.0 - (w * cm).sum() / denom)


def _binary_auroc(y_true: np.ndarray, score: np.ndarray) -> float:
    """AUROC by the rank-sum (Mann-Whitney U) formula, ties counted half."""
    pos = y_true.astype(bool)
    n_pos, n_neg = int(pos.sum()), int((~pos).sum())
    if n_pos == 0 or n_neg == 0:
        return float("nan")
    ranks = _average_ranks(score)
    return float((ranks[pos].sum() - n_pos * (n_pos + 1) / 2) / (n_pos * n_neg))


def _average_ranks(values: np.ndarray) -> np.ndarray:
    """1-based ranks with ties given their average rank."""
    order = np.argsort(values, kind="mergesort")
    sorted_vals = values[order]
    ranks = np.empty(len(values), dtype=float)
    start = 0
    while start < len(values):
        end = start
        while end + 1 < len(values) and sorted_vals[end + 1] == sorted_vals[start]:
            end += 1
        ranks[order[start : end + 1]] = (start + end) / 2 + 1
        start = end + 1
    return ranks


def auroc(y_true: Sequence[int], probs: np.ndarray) -> float:
    """AUROC: binary when ``probs`` is 1D (score of class 1), else macro one-vs-rest."""
    y = np.asarray(y_true, int)
    probs = np.asarray(probs, float)
    if probs.ndim == 1:
        return _binary_auroc(y == 1, probs)
    per_class = (_binary_auroc(y == c, probs[:, c]) for c in range(probs.shape[1]))
    scores = [s for s in per_class if np.isfinite(s)]
    return float(np.mean(scores)) if scores else float("nan")


def classification_scores(
    y_true: Sequence[int], probs: np.ndarray, num_classes: int, kappa_weights: str | None = None
) -> dict[str, float]:
    """Accuracy, balanced accuracy, macro-F1, AUROC and Cohen's kappa from class probabilities."""
    probs = np.asarray(probs, float)
    y_pred = probs.argmax(axis=1)
    auc_input = probs[:, 1] if num_classes == 2 else probs
    return {
        "accuracy": accuracy(y_true, y_pred),
        "balanced_accuracy": balanced_accuracy(y_true, y_pred, num_classes),
        "macro_f1": macro_f1(y_true, y_pred, num_classes),
        "auroc": auroc(y_true, auc_input),
        "kappa": cohen_kappa(y_true, y_pred, num_classes, kappa_weights),
    }


# --------------------------------------------------------------------------------- landmarks


def landmark_errors_mm(pred_mm: np.ndarray, ref_mm: np.ndarray) -> np.ndarray:
    """Euclidean distance per landmark between coordinates already in mm, shape ``(..., K)``."""
    return np.linalg.norm(np.asarray(pred_mm, float) - np.asarray(ref_mm, float), axis=-1)


# --------------------------------------------------------------------------------- bootstrap


def bootstrap_ci(
    statistic: Callable[[np.ndarray], float],
    n_items: int,
    n_resamples: int = 1000,
    confidence: float = 0.95,
    seed: int = 0,
) -> tuple[float, float, float]:
    """Point estimate and percentile bootstrap interval of a statistic over resampled items.

    Args:
        statistic: Maps an index array (which items to use, with repeats) to a number.
        n_items: Number of items (patients, cases) to resample.
        n_resamples: Bootstrap resamples.
        confidence: Interval coverage.
        seed: RNG seed (recorded by callers beside the numbers).

    Returns:
        ``(estimate, low, high)``.
    """
    rng = np.random.default_rng(seed)
    estimate = float(statistic(np.arange(n_items)))
    samples = np.array(
        [statistic(rng.integers(0, n_items, n_items)) for _ in range(n_resamples)], dtype=float
    )
    samples = samples[np.isfinite(samples)]
    if samples.size == 0:
        return estimate, float("nan"), float("nan")
    alpha = (1 - confidence) / 2
    return estimate, float(np.quantile(samples, alpha)), float(np.quantile(samples, 1 - alpha))


def mean_ci(values: Sequence[float], n_resamples: int = 1000, seed: int = 0) -> tuple[float, float, float]:
    """Bootstrap CI of the mean of per-item values (NaNs ignored)."""
    v = np.asarray(values, float)
    v = v[np.isfinite(v)]
    if v.size == 0:
        return float("nan"), float("nan"), float("nan")
    return bootstrap_ci(lambda idx: float(v[idx].mean()), v.size, n_resamples, seed=seed)
