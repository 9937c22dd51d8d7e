"""The segmentation Dice terms: batch Dice (default) and per-slice Dice, against hand-computed values."""

import math

import pytest
import torch

from cmrfm.tasks.kinds import per_slice_dice_loss, soft_dice_loss

BIG = 50.0  # logit gap that makes the softmax one-hot to ~1e-22


def _logits(pred: torch.Tensor, classes: int) -> torch.Tensor:
    """Hard predictions ``(B, H, W)`` -> logits ``(B, C, H, W)`` whose softmax is one-hot."""
    return torch.nn.functional.one_hot(pred, classes).permute(0, 3, 1, 2).float() * BIG


def _two_slices():
    """Slice 0: a 4-px structure drawn as 2 px; slice 1: a 12-px structure drawn exactly (1×4 rows)."""
    target = torch.zeros(2, 4, 4, dtype=torch.long)
    pred = torch.zeros(2, 4, 4, dtype=torch.long)
    target[0, 0, :] = 1  # 4 px
    pred[0, 0, :2] = 1  # 2 px, all inside
    target[1, :3, :] = 1  # 12 px
    pred[1, :3, :] = 1
    return pred, target


def test_batch_dice_pools_the_slices():
    pred, target = _two_slices()
    # pooled: intersection 2 + 12, sums (2 + 12) + (4 + 12): Dice 28 / 30
    loss = soft_dice_loss(_logits(pred, 2), target)
    assert loss.item() == pytest.approx(1 - 28 / 30, abs=1e-5)


def test_per_slice_dice_weights_each_slice_equally():
    pred, target = _two_slices()
    # slice 0: 2*2 / (2 + 4) = 2/3; slice 1: 1
    loss = per_slice_dice_loss(_logits(pred, 2), target)
    assert loss.item() == pytest.approx(1 - (2 / 3 + 1) / 2, abs=1e-5)


def test_per_slice_dice_skips_pairs_without_the_class():
    target = torch.zeros(2, 4, 4, dtype=torch.long)
    pred = torch.zeros(2, 4, 4, dtype=torch.long)
    target[0, 0, :] = 1
    pred[0, 0, :] = 1  # slice 0 exact
    pred[1, 3, :] = 2  # slice 1: a false positive of class 2, which no target holds
    loss = per_slice_dice_loss(_logits(pred, 3), target)
    assert loss.item() == pytest.approx(0.0, abs=1e-5)  # left to cross-entropy
    # a batch with no foreground at all gives 0 and still backpropagates
    logits = torch.randn(2, 3, 4, 4, requires_grad=True)
    empty = per_slice_dice_loss(logits, torch.zeros(2, 4, 4, dtype=torch.long))
    empty.backward()
    assert empty.item() == 0.0 and logits.grad is not None and not math.isnan(logits.grad.sum().item())


def test_segmentation_loss_follows_the_option():
    from cmrfm.tasks import TASKS

    task_cls = TASKS.get("lge-seg")
    pred, target = _two_slices()
    outputs = {"logits": _logits(pred, 5), "stage_logits": []}
    batch = {"mask": target}
    losses = {}
    for per_slice in (False, True):
        task = task_cls(task_cls.config_cls(dice_per_slice=per_slice, ce_weight=0.0, deep_supervision=0.0))
        losses[per_slice] = task.loss(outputs, batch).item()
    # only class 1 is present: batch Dice 28/30, per-slice (2/3 + 1) / 2; classes 2-4 absent -> Dice 1 in
    # the batch term (eps / eps), skipped in the per-slice term
    assert losses[False] == pytest.approx(1 - (28 / 30 + 3) / 4, abs=1e-4)
    assert losses[True] == pytest.approx(1 - (2 / 3 + 1) / 2, abs=1e-4)
