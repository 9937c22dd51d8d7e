"""The shared fine-tuning engine on tiny synthetic data (fast)."""

import json

import pytest
import torch

from cmrfm.engine.finetune import FinetuneConfig, finetune, load_task_model, split_subjects
from cmrfm.errors import CmrfmError, ConfigError
from cmrfm.tasks import TASKS

TINY = {"embed_dim": 32, "depth": 2, "num_heads": 2}


def _cfg(tmp_path, **kw):
    base = dict(
        task="sax-seg",
        synthetic=True,
        image_size=32,
        backbone=TINY,
        steps=4,
        batch_size=4,
        folds=2,
        fold=0,
        out=str(tmp_path / "run"),
        ckpt_every=2,
        log_every=1,
        amp="off",
    )
    base.update(kw)
    return FinetuneConfig(**base)


def _csv_rows(path):
    import csv

    with path.open() as handle:
        return [r for r in csv.DictReader(handle) if r["mean_entropy"] not in ("", "nan")]


def test_finetune_runs_evaluates_and_exports(tmp_path):
    result = finetune(_cfg(tmp_path), progress=False)
    assert result.weights.is_file() and (result.out / "metrics.json").is_file()
    metrics = json.loads((result.out / "metrics.json").read_text())["metrics"]
    assert 0.0 <= metrics["dice_mean"] <= 1.0
    assert not set(result.train_subjects) & set(result.eval_subjects)
    model, card = load_task_model(result.weights)
    assert card["task"] == "sax-seg" and card["train_subjects"] == len(result.train_subjects)
    # the OOD threshold for study analysis is calibrated on the held-out volumes' entropies
    held_out = [float(r["mean_entropy"]) for r in _csv_rows(result.out / "per_subject.csv")]
    if held_out:
        assert card["ood"]["entropy_max"] == pytest.approx(1.2 * max(held_out), abs=1e-3)
    else:  # an untrained model found no heart in any held-out volume: nothing to calibrate on
        assert "ood" not in card
    out = model(
        next(
            iter(
                torch.utils.data.DataLoader(
                    TASKS.get("sax-seg")().synthetic_data().make_dataset(["phantom00"], False),
                    batch_size=2,
                    collate_fn=model.task.collate,
                )
            )
        )
    )
    assert out["logits"].shape == (2, 4, 32, 32)


def test_resume_after_crash_is_exact(tmp_path, monkeypatch):
    import cmrfm.engine.finetune as ft

    full = finetune(_cfg(tmp_path, out=str(tmp_path / "a"), fold=-1, export_fp16=False), progress=False)
    real_clip = ft.clip_gradients
    calls = {"n": 0}

    def crash_on_third_step(params, max_norm):
        calls["n"] += 1
        if calls["n"] == 3:  # after the step-2 checkpoint
            raise KeyboardInterrupt
        return real_clip(params, max_norm)

    monkeypatch.setattr(ft, "clip_gradients", crash_on_third_step)
    crashed = _cfg(tmp_path, out=str(tmp_path / "b"), fold=-1, export_fp16=False)
    with pytest.raises(KeyboardInterrupt):
        finetune(crashed, progress=False)
    assert (tmp_path / "b" / "checkpoints" / "last.pt").is_file()
    monkeypatch.setattr(ft, "clip_gradients", real_clip)
    crashed.resume = True
    resumed = finetune(crashed, progress=False)
    a_model, _ = load_task_model(full.weights)
    b_model, _ = load_task_model(resumed.weights)
    for (name, pa), (_, pb) in zip(a_model.state_dict().items(), b_model.state_dict().items(), strict=True):
        assert torch.equal(pa, pb), name


def test_bad_configuration_is_clear(tmp_path):
    with pytest.raises(CmrfmError, match="unknown task"):
        finetune(_cfg(tmp_path, task="nope"), progress=False)
    with pytest.raises(ConfigError, match="no task"):
        finetune(FinetuneConfig(), progress=False)
    with pytest.raises(ConfigError, match="fold=7"):
        finetune(_cfg(tmp_path, fold=7), progress=False)
    finetune(_cfg(tmp_path, steps=1), progress=False)
    with pytest.raises(ConfigError, match="already holds a run"):
        finetune(_cfg(tmp_path, steps=1), progress=False)


def test_fewshot_subset_of_training_fold(tmp_path):
    task = TASKS.get("sax-seg")()
    data = task.synthetic_data(num_subjects=8)
    train, held = split_subjects(data, _cfg(tmp_path, k_subjects=2, folds=4))
    assert len(train) == 2 and len(held) == 2 and not set(train) & set(held)
    # eval_unused: the same 2 training subjects; every other subject is evaluated, held-out fold first
    wide_train, wide_held = split_subjects(data, _cfg(tmp_path, k_subjects=2, folds=4, eval_unused=True))
    assert wide_train == train and wide_held[:2] == held
    assert sorted(wide_train + wide_held) == sorted(data.subjects)
    with pytest.raises(ConfigError, match="set k_subjects"):
        split_subjects(data, _cfg(tmp_path, folds=4, eval_unused=True))


def test_init_from_another_task_model_transfers_matching_head(tmp_path):
    """A cine sax-seg model starts lge-seg: same backbone, decoder copied except the class outputs."""
    source = finetune(_cfg(tmp_path / "sax", export_fp16=False), progress=False)
    sax_model, _ = load_task_model(source.weights)
    result = finetune(
        _cfg(tmp_path / "lge", task="lge-seg", init=str(source.weights), steps=0, export_fp16=False),
        progress=False,
    )
    lge_model, card = load_task_model(result.weights)
    transfer = card["transfer"]
    assert transfer["from_task"] == "sax-seg" and card["init"].startswith("sax-seg")
    assert 0 < transfer["head_tensors_transferred"] < transfer["head_tensors"]
    for name, tensor in sax_model.backbone.state_dict().items():
        assert torch.equal(lge_model.backbone.state_dict()[name], tensor), name
    sax_head, lge_head = sax_model.head.state_dict(), lge_model.head.state_dict()
    same = [k for k in lge_head if k in sax_head and torch.equal(lge_head[k], sax_head[k])]
    differ = [k for k in lge_head if k not in same]
    assert len(same) == transfer["head_tensors_transferred"]
    assert differ and all(lge_head[k].shape != sax_head[k].shape for k in differ)


def test_init_from_a_features_only_model_is_clear(tmp_path):
    source = finetune(
        _cfg(tmp_path / "dis", task="disease-cls", task_options={"images": False, "features": "labels"}),
        progress=False,
    )
    with pytest.raises(ConfigError, match="stores no ViT backbone"):
        finetune(_cfg(tmp_path / "sax", init=str(source.weights)), progress=False)


def test_compiled_run_exports_plain_weights(tmp_path):
    """compile=true trains through torch.compile'd blocks; the exported model loads without it."""
    result = finetune(_cfg(tmp_path, compile=True, steps=2, export_fp16=False), progress=False)
    from cmrfm.engine.checkpoint import load_weights

    exported, _ = load_weights(result.weights)
    model, card = load_task_model(result.weights)  # a strict load: keys must be the eager model's
    assert card["steps"] == 2 and set(exported) == set(model.state_dict())
    assert not any("_orig_mod" in k for k in exported)


def test_scar_evidence_head_starts_from_an_lge_seg_model(tmp_path):
    """lge-infarct head=scar takes an lge-seg model's backbone and whole decoder, and trains only its head."""
    seg = finetune(_cfg(tmp_path / "seg", task="lge-seg", export_fp16=False), progress=False)
    seg_model, _ = load_task_model(seg.weights)
    result = finetune(
        _cfg(
            tmp_path / "inf",
            task="lge-infarct",
            init=str(seg.weights),
            batch_size=2,
            export_fp16=False,
            task_options={"head": "scar"},
        ),
        progress=False,
    )
    model, card = load_task_model(result.weights)
    decoder = model.head.decoder.state_dict()
    assert card["transfer"]["head_tensors_transferred"] == len(decoder)
    for name, tensor in seg_model.head.state_dict().items():
        assert torch.equal(decoder[name], tensor), name  # frozen: still the segmentation decoder
    trained = [n for n, p in model.head.named_parameters() if not n.startswith("decoder.")]
    assert trained and all(p.requires_grad for n, p in model.head.named_parameters() if n in trained)
    assert {"accuracy", "auroc"} <= set(result.eval.metrics)


def test_conv_skip_decoder_is_recorded_and_reloads(tmp_path):
    result = finetune(_cfg(tmp_path, export_fp16=False), progress=False)
    model, card = load_task_model(result.weights)
    assert card["task_config"]["conv_skip_stages"] == 2  # the default
    assert len(model.head.conv_down) == 2
    with pytest.raises(ConfigError, match="conv_skip_stages must be in"):
        finetune(_cfg(tmp_path / "bad", task_options={"conv_skip_stages": 3}), progress=False)


def test_a_card_from_before_conv_skips_loads_as_it_was_built(tmp_path):
    """Cards written before the option existed hold no conv_skip_stages: they load with 0, not today's 2."""
    from cmrfm.engine.checkpoint import load_weights, save_weights

    result = finetune(_cfg(tmp_path, export_fp16=False, task_options={"conv_skip_stages": 0}), progress=False)
    tensors, card = load_weights(result.weights)
    del card["task_config"]["conv_skip_stages"]
    old = tmp_path / "old.safetensors"
    save_weights(tensors, old, card, fp16=False)
    model, _ = load_task_model(old)
    assert len(model.head.conv_down) == 0


def test_frozen_decoder_must_transfer_whole(tmp_path):
    seg = finetune(
        _cfg(tmp_path / "seg", task="lge-seg", steps=0, task_options={"conv_skip_stages": 0}), progress=False
    )
    with pytest.raises(ConfigError, match="conv_skip_stages=0"):
        finetune(
            _cfg(tmp_path / "inf", task="lge-infarct", init=str(seg.weights), task_options={"head": "scar"}),
            progress=False,
        )
    with pytest.raises(ConfigError, match="must start from a task model"):  # nothing to take it from
        finetune(_cfg(tmp_path / "inf2", task="lge-infarct", task_options={"head": "scar"}), progress=False)


def test_landmarks_start_from_a_segmentation_decoder(tmp_path):
    """The landmark head wraps its decoder under ``decoder.``; a sax-seg decoder still transfers."""
    seg = finetune(_cfg(tmp_path / "sax", steps=0), progress=False)
    result = finetune(
        _cfg(tmp_path / "lm", task="landmarks", init=str(seg.weights), steps=0, task_options={"lax": False}),
        progress=False,
    )
    _, card = load_task_model(result.weights)
    transfer = card["transfer"]
    assert transfer["head_tensors"] - 10 < transfer["head_tensors_transferred"] < transfer["head_tensors"]
