"""A k-NN probe of frozen backbone features: does pretraining make the features more useful?

Features are the class token of the backbone on a small labelled set; a cosine-similarity k-NN vote
(DINO's weighted k-NN) classifies held-out images. Labelled sets: synthetic phantom classes (always
available) or a column of a prepared cache (ACDC ``group``, simulator ``view``/``sequence``), split by
study so no subject is on both sides.
"""

from __future__ import annotations

import zlib
from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F

from cmrfm.errors import InputError
from cmrfm.models.vit import VisionTransformer, standardize
from cmrfm.pretrain.config import ProbeConfig
from cmrfm.pretrain.data import PHANTOM_CLASSES, phantom, to_square

#: Temperature of DINO's weighted k-NN vote.
KNN_TEMPERATURE = 0.07
#: Images per forward pass when extracting features.
FEATURE_BATCH = 64


@dataclass
class ProbeSet:
    """Labelled images split into train and test.

    Attributes:
        train_images: (N, 1, S, S) float32 in [0, 1].
        train_labels: (N,) int64.
        test_images: (M, 1, S, S).
        test_labels: (M,).
        classes: Class names.
        name: What the set is (for logs and the model card).
    """

    train_images: torch.Tensor
    train_labels: torch.Tensor
    test_images: torch.Tensor
    test_labels: torch.Tensor
    classes: list[str]
    name: str


def synthetic_probe_set(size: int, n: int, test_fraction: float, seed: int = 1234) -> ProbeSet:
    """Phantoms of :data:`~cmrfm.pretrain.data.PHANTOM_CLASSES`, balanced, split by image."""
    rng = np.random.default_rng(seed)
    images, labels = [], []
    for i in range(n):
        img, cls = phantom(rng, size, cls=i % len(PHANTOM_CLASSES))
        images.append(torch.from_numpy(img)[None])
        labels.append(cls)
    x = torch.stack(images)  # (N, 1, S, S)
    y = torch.tensor(labels)
    n_test = max(1, round(n * test_fraction))
    return ProbeSet(
        x[n_test:], y[n_test:], x[:n_test], y[:n_test], list(PHANTOM_CLASSES), "synthetic-phantoms"
    )


def cache_probe_set(cfg: ProbeConfig, size: int, seed: int = 1234) -> ProbeSet:
    """A prepared cache's ``cfg.label`` column, split by study (hash), at most ``cfg.max_images`` images."""
    from cmrfm.data.cache import PreparedCache
    from cmrfm.data.shards import rescale_unit

    cache = PreparedCache(cfg.path)
    rows = cache.rows
    if not rows or cfg.label not in rows[0]:
        raise InputError(cfg.path, f"probe label column {cfg.label!r} is not in the cache manifest")
    usable = [i for i, r in enumerate(rows) if r.get(cfg.label) not in (None, "")]
    if not usable:
        raise InputError(cfg.path, f"no item of the cache has a {cfg.label!r} value")
    rng = np.random.default_rng(seed)
    if len(usable) > cfg.max_images:
        usable = sorted(rng.choice(usable, cfg.max_images, replace=False).tolist())
    classes = sorted({str(rows[i][cfg.label]) for i in usable})
    train, test = [], []
    for i in usable:
        bucket = zlib.crc32(str(rows[i]["study"]).encode()) % 1000 / 1000
        (test if bucket < cfg.test_fraction else train).append(i)
    if not train or not test:
        raise InputError(cfg.path, "probe split left train or test empty (too few studies)")

    def load(indices: list[int]) -> tuple[torch.Tensor, torch.Tensor]:
        x = torch.stack([to_square(rescale_unit(cache[i]["image"]), size) for i in indices])
        y = torch.tensor([classes.index(str(rows[i][cfg.label])) for i in indices])
        return x, y

    xtr, ytr = load(train)
    xte, yte = load(test)
    return ProbeSet(xtr, ytr, xte, yte, classes, f"cache:{cfg.label}")


def build_probe_set(cfg: ProbeConfig, size: int) -> ProbeSet:
    """The probe set ``cfg`` describes."""
    if cfg.source == "cache":
        return cache_probe_set(cfg, size)
    return synthetic_probe_set(size, cfg.max_images, cfg.test_fraction)


@torch.no_grad()
def extract_features(
    model: VisionTransformer, images: torch.Tensor, device: torch.device, dtype: torch.dtype | None = None
) -> torch.Tensor:
    """L2-normalised class-token features (N, D) of standardised images, in eval mode.

    Args:
        model: The backbone.
        images: (N, 1, S, S) images in [0, 1].
        device: Where to run.
        dtype: Autocast dtype (e.g. ``torch.bfloat16``), or ``None`` for fp32.
    """
    was_training = model.training
    model.eval()
    feats = []
    for chunk in images.split(FEATURE_BATCH):
        with torch.autocast(device.type, dtype=dtype or torch.bfloat16, enabled=dtype is not None):
            feats.append(model(standardize(chunk.to(device))).float().cpu())
    model.train(was_training)
    return F.normalize(torch.cat(feats), dim=-1)


def knn_classify(
    train: torch.Tensor, train_y: torch.Tensor, test: torch.Tensor, num_classes: int, k: int
) -> torch.Tensor:
    """Weighted cosine k-NN (DINO): predicted class of every test feature row."""
    k = min(k, train.shape[0])
    sim = test @ train.t()  # (M, N)
    top, idx = sim.topk(k, dim=1)  # (M, k)
    weights = (top / KNN_TEMPERATURE).exp()
    votes = torch.zeros(test.shape[0], num_classes)
    votes.scatter_add_(1, train_y[idx], weights)
    return votes.argmax(dim=1)


def knn_probe(
    model: VisionTransformer,
    probe: ProbeSet,
    k: int,
    device: torch.device,
    dtype: torch.dtype | None = None,
) -> dict[str, float]:
    """Accuracy and balanced accuracy of the k-NN probe on the test split."""
    tr = extract_features(model, probe.train_images, device, dtype)
    te = extract_features(model, probe.test_images, device, dtype)
    pred = knn_classify(tr, probe.train_labels, te, len(probe.classes), k)
    correct = (pred == probe.test_labels).float()
    per_class = [correct[probe.test_labels == c].mean() for c in probe.test_labels.unique()]
    return {"knn_acc": float(correct.mean()), "knn_bal_acc": float(torch.stack(per_class).mean())}
