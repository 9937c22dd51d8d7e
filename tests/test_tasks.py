"""Every registered task builds, trains a few steps and evaluates on its tiny synthetic data."""

import math

import pytest
import torch

from cmrfm.engine.finetune import FinetuneConfig, build_task, finetune, load_task_model
from cmrfm.errors import CmrfmError
from cmrfm.tasks import TASKS

TINY = {"embed_dim": 32, "depth": 2, "num_heads": 2}


@pytest.mark.parametrize("task_id", TASKS.names())
@pytest.mark.parametrize(("model", "mode"), [("vit", "full"), ("vit", "linear"), ("baseline", "full")])
def test_task_trains_and_evaluates(task_id, model, mode, tmp_path):
    cfg = FinetuneConfig(
        task=task_id,
        model=model,
        synthetic=True,
        image_size=32,
        backbone=TINY,
        steps=2,
        batch_size=2,
        folds=2,
        fold=0,
        mode=mode,
        out=str(tmp_path / "run"),
        amp="off",
        log_every=1,
    )
    result = finetune(cfg, progress=False)
    primary = TASKS.get(task_id).info.metric
    assert primary in result.eval.metrics
    assert math.isfinite(result.eval.metrics[primary])
    assert result.eval.per_subject and {r["subject"] for r in result.eval.per_subject} <= set(
        result.eval_subjects
    )
    _, card = load_task_model(result.weights)
    assert card["task"] == task_id and card["mode"] == mode and card["model"] == model


def test_registry_ids_and_info():
    for task_id in TASKS.names():
        info = TASKS.get(task_id).info
        assert info.id == task_id and info.kind in ("segmentation", "classification", "landmarks")
        assert len(info.classes) >= 2


def test_bad_task_option_and_weights(tmp_path):
    with pytest.raises(CmrfmError, match=r"task_options\.nope"):
        build_task("sax-seg", {"nope": 1})
    with pytest.raises(CmrfmError, match="not found"):
        load_task_model(tmp_path / "missing.safetensors")


def test_linear_mode_keeps_backbone_frozen(tmp_path):
    cfg = FinetuneConfig(
        task="sax-seg",
        synthetic=True,
        image_size=32,
        backbone=TINY,
        steps=2,
        batch_size=2,
        fold=-1,
        mode="linear",
        out=str(tmp_path / "lin"),
        amp="off",
        seed=5,
        export_fp16=False,
    )
    result = finetune(cfg, progress=False)
    from cmrfm.models.factory import build_backbone

    torch.manual_seed(5)
    fresh = build_backbone("tiny", img_size=32, **TINY)
    model, _ = load_task_model(result.weights)
    for (name, a), (_, b) in zip(
        fresh.state_dict().items(), model.backbone.state_dict().items(), strict=True
    ):
        assert torch.equal(a, b), name
