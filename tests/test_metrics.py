import numpy as np
import pytest
import torch

from cmrfm import metrics as M


def test_dice_hand_computed():
    a = np.zeros((4, 4), int)
    b = np.zeros((4, 4), int)
    a[0, :2] = 1  # 2 pixels
    b[0, 1:4] = 1  # 3 pixels, 1 overlap
    assert M.dice(a, b, 1) == pytest.approx(2 * 1 / 5)
    assert M.dice(a, b, 2) == 1.0  # both empty
    assert M.dice(a, np.zeros_like(a), 1) == 0.0
    assert M.dice(a, b, (1, 2)) == pytest.approx(0.4)


def test_surface_distances_in_mm():
    ref = np.zeros((20, 20), bool)
    ref[5:15, 5:15] = True
    pred = np.roll(ref, 2, axis=0)  # shifted 2 pixels along axis 0
    # spacing 1.5 mm along axis 0: the boundaries are 2 * 1.5 = 3 mm apart at most
    assert M.hd95(pred.astype(int), ref.astype(int), 1, (1.5, 1.0)) == pytest.approx(3.0)
    assert M.hd95(ref.astype(int), ref.astype(int), 1, (1.5, 1.0)) == 0.0
    assert 0 < M.assd(pred.astype(int), ref.astype(int), 1, (1.5, 1.0)) < 3.0
    assert np.isnan(M.hd95(np.zeros((5, 5), int), ref[:5, :5].astype(int), 1, (1, 1)))


def test_classification_hand_computed():
    y = [0, 0, 1, 1, 2, 2]
    pred = [0, 1, 1, 1, 2, 0]
    assert M.accuracy(y, pred) == pytest.approx(4 / 6)
    assert M.balanced_accuracy(y, pred, 3) == pytest.approx((0.5 + 1 + 0.5) / 3)
    # F1: class0 tp1 fp1 fn1 -> 0.5; class1 tp2 fp1 fn0 -> 0.8; class2 tp1 fp0 fn1 -> 2/3
    assert M.macro_f1(y, pred, 3) == pytest.approx((0.5 + 0.8 + 2 / 3) / 3)
    # kappa: po = 4/6, pe = sum(row*col)/36 = (2*2 + 2*3 + 2*1)/36 = 12/36
    assert M.cohen_kappa(y, pred, 3) == pytest.approx((4 / 6 - 1 / 3) / (1 - 1 / 3))
    assert M.cohen_kappa(y, y, 3, "quadratic") == 1.0


def test_auroc_matches_pairwise_definition():
    rng = np.random.default_rng(0)
    y = rng.integers(0, 2, 50)
    s = rng.random(50)
    s[:5] = 0.5  # ties
    pairs = [(1.0 if sp > sn else 0.5 if sp == sn else 0.0) for sp in s[y == 1] for sn in s[y == 0]]
    assert M.auroc(y, s) == pytest.approx(np.mean(pairs))
    probs = np.eye(3)[[0, 1, 2, 0]]
    assert M.auroc([0, 1, 2, 0], probs) == 1.0


def test_bootstrap_interval_contains_mean():
    values = np.random.default_rng(1).normal(0.8, 0.05, 100)
    est, lo, hi = M.mean_ci(values, n_resamples=300)
    assert lo < est < hi and est == pytest.approx(values.mean())
    assert hi - lo < 0.05


def test_heart_entropy_and_ood_threshold_hand_computed():
    probs = np.full((1, 4, 1, 1), 0.25)
    assert M.normalised_entropy(probs)[0, 0, 0] == pytest.approx(1.0)
    assert M.normalised_entropy(np.array([[1.0, 0.0]]), axis=1)[0] == pytest.approx(0.0, abs=1e-6)
    entropy = np.zeros((9, 9, 1), np.float32)
    entropy[4, 4, 0] = 0.9  # the heart pixel
    entropy[0, 0, 0] = 1.0  # far from the heart: ignored
    labels = np.zeros((9, 9, 1), np.uint8)
    labels[4, 4, 0] = 1
    # 3D dilation by 1 of one voxel in a single slice: the 5-voxel cross in-plane
    assert M.mean_heart_entropy(entropy, labels, margin_px=1) == pytest.approx(0.9 / 5)
    assert M.mean_heart_entropy(entropy, np.zeros_like(labels)) is None
    ood = M.entropy_threshold([0.5, 0.55, None, float("nan"), 0.6])
    assert ood["entropy_max"] == pytest.approx(0.72) and "3 held-out volumes" in ood["calibration"]
    assert M.entropy_threshold([None]) is None


class _FixedLogits(torch.nn.Module):
    """Returns one-hot logits of a fixed label map for every item of a batch (no learning)."""

    def __init__(self, labels: np.ndarray, num_classes: int) -> None:
        super().__init__()
        onehot = np.eye(num_classes, dtype=np.float32)[labels]  # (H, W, C)
        self.logits = torch.from_numpy(onehot).permute(2, 0, 1) * 10.0  # (C, H, W)

    def forward(self, batch):
        return {"logits": self.logits.expand(batch["image"].shape[0], -1, -1, -1)}


def test_lge_seg_scores_the_whole_scar_and_myocardium_hand_computed():
    """Infarct and MVO swapped inside a right scar: class Dice 0, scar Dice 1; composites not in the mean."""
    from cmrfm.tasks import TASKS

    task = TASKS.get("lge-seg")(TASKS.get("lge-seg").config_cls(prior_correction=False))
    ref = np.zeros((8, 8), np.int64)
    ref[1:7, 1:7] = 2  # myocardium ring ...
    ref[3:5, 3:5] = 1  # ... around the blood pool
    ref[1, 1:4] = 3  # infarct: 3 px
    ref[1, 4:6] = 4  # MVO: 2 px
    pred = ref.copy()
    pred[1, 1:4] = 4  # the scar found, its two parts swapped
    pred[1, 4:6] = 3
    item = {
        "image": torch.zeros(1, 8, 8),
        "mask": torch.from_numpy(ref),
        "subject": "case",
        "volume": "case",
        "slice": 0,
        "spacing": torch.tensor([1.0, 1.0, 1.0]),
    }
    result = task.evaluate(_FixedLogits(pred, 5), [item], batch_size=1)
    m = result.metrics
    assert m["dice_infarct"] == pytest.approx(0.0) and m["dice_MVO"] == pytest.approx(0.0)
    assert m["dice_scar"] == pytest.approx(1.0) and m["dice_myocardium_all"] == pytest.approx(1.0)
    assert m["dice_mean"] == pytest.approx((1 + 1 + 0 + 0) / 4)  # LV, MYO, infarct, MVO only


def _quadrant_item() -> tuple[np.ndarray, dict]:
    """An 8x8 slice whose reference is LV in the top-left quadrant (a blank image)."""
    ref = np.zeros((8, 8), np.int64)
    ref[:4, :4] = 1
    item = {
        "image": torch.zeros(1, 8, 8),
        "mask": torch.from_numpy(ref),
        "subject": "s",
        "volume": "s",
        "slice": 0,
        "spacing": torch.tensor([1.0, 1.0, 1.0]),
    }
    return ref, item


def test_segmentation_test_time_flips_average_the_flipped_views_hand_computed():
    """A model that ignores its input and always draws the top-left quadrant: each of the four flipped
    views, mapped back, puts it in another quadrant, so the mean is 1/4 per quadrant (background wins)."""
    from cmrfm.tasks import TASKS

    config_cls = TASKS.get("sax-seg").config_cls
    ref, item = _quadrant_item()
    model = _FixedLogits(ref, 4)
    plain = TASKS.get("sax-seg")(config_cls()).evaluate(model, [item], batch_size=1)
    flipped = TASKS.get("sax-seg")(config_cls(test_time_flips=True)).evaluate(model, [item], batch_size=1)
    assert plain.metrics["ml_pred_LV"] == pytest.approx(16 / 1000)
    assert flipped.metrics["ml_pred_LV"] == 0.0  # 0.25 < 0.75 background everywhere


def test_predict_masks_keeps_the_probabilities_the_prediction_is_the_argmax_of():
    """``keep_probs``: (C, H, W) float16 per slice; four flipped views of a quadrant average to 1/4 there."""
    from cmrfm.tasks import TASKS

    config_cls = TASKS.get("sax-seg").config_cls
    ref, item = _quadrant_item()
    task = TASKS.get("sax-seg")(config_cls(test_time_flips=True))
    (row,) = task.predict_masks(_FixedLogits(ref, 4), [item], batch_size=1, keep_probs=True)
    probs = row["probs"]
    assert probs.shape == (4, 8, 8) and probs.dtype == np.float16
    assert np.array_equal(probs.argmax(axis=0), row["pred"])
    assert float(probs[1, 0, 0]) == pytest.approx(0.25, abs=1e-3)  # LV in one of the four views
    assert float(probs[0, 0, 0]) == pytest.approx(0.75, abs=1e-3)
    assert "probs" not in task.predict_masks(_FixedLogits(ref, 4), [item], batch_size=1)[0]
