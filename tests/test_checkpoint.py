import random

import numpy as np
import pytest
import torch
from torch import nn

from cmrfm.engine import checkpoint as ck
from cmrfm.engine.optim import (
    OptimConfig,
    apply_schedules,
    build_adamw,
    clip_gradients,
    cosine_schedule,
    param_groups,
)
from cmrfm.errors import InputError
from cmrfm.models.factory import build_backbone
from cmrfm.models.vit import vit_config


def test_atomic_save_failure_keeps_previous_checkpoint(tmp_path, monkeypatch):
    mgr = ck.CheckpointManager(tmp_path / "ckpt", keep=0)
    mgr.save({"step": 1, "w": torch.arange(10)}, step=1)
    real_save = torch.save

    def failing_save(obj, handle, *a, **kw):  # writes half a checkpoint, then "disk full"
        handle.write(b"PK\x03\x04partial")
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(ck.torch, "save", failing_save)
    with pytest.raises(OSError, match="No space"):
        mgr.save({"step": 2, "w": torch.zeros(10)}, step=2)
    monkeypatch.setattr(ck.torch, "save", real_save)
    state = mgr.load()
    assert state["step"] == 1 and torch.equal(state["w"], torch.arange(10))
    assert not list((tmp_path / "ckpt").glob("*.tmp"))


def test_manager_keeps_last_n_and_reports_corruption(tmp_path):
    mgr = ck.CheckpointManager(tmp_path, keep=2)
    for step in (10, 20, 30):
        mgr.save({"step": step}, step)
    assert sorted(p.name for p in tmp_path.glob("step_*.pt")) == ["step_00000020.pt", "step_00000030.pt"]
    assert mgr.load()["step"] == 30
    mgr.last.write_bytes(mgr.last.read_bytes()[:20])
    with pytest.raises(InputError, match="unreadable or truncated"):
        mgr.load()
    with pytest.raises(InputError, match="not found"):
        ck.load_checkpoint(tmp_path / "missing.pt")


def test_rng_roundtrip():
    state = ck.rng_state()
    a = (random.random(), np.random.rand(), torch.rand(3))  # noqa: NPY002
    ck.set_rng_state(state)
    b = (random.random(), np.random.rand(), torch.rand(3))  # noqa: NPY002
    assert a[0] == b[0] and a[1] == b[1] and torch.equal(a[2], b[2])


def test_weights_and_card(tmp_path):
    path = ck.save_weights({"a": torch.randn(3, 3)}, tmp_path / "w.safetensors", {"x": 1})
    tensors, card = ck.load_weights(path)
    assert card == {"x": 1} and tensors["a"].shape == (3, 3)
    (tmp_path / "bad.safetensors").write_bytes(b"garbage")
    with pytest.raises(InputError, match="safetensors"):
        ck.load_weights(tmp_path / "bad.safetensors")


def test_cosine_schedule():
    s = cosine_schedule(1.0, 0.1, total_steps=100, warmup_steps=10)
    assert len(s) == 100 and s[0] == 0.0 and s[10] == pytest.approx(1.0)
    assert s[-1] == pytest.approx(0.1, abs=1e-3) and np.all(np.diff(s[10:]) <= 1e-12)
    assert np.all(np.diff(s[:11]) > 0)


def test_param_groups_decay_and_layer_decay():
    model = build_backbone(vit_config("tiny", depth=2, embed_dim=48, num_heads=3, img_size=32))
    head = nn.Sequential(model, nn.Linear(48, 3))  # names: "0.blocks...", "1.weight"
    groups = param_groups(
        head,
        weight_decay=0.05,
        layer_decay=0.5,
        no_weight_decay=model.no_weight_decay(),
        layer_id=model.layer_id,
        num_layers=model.cfg.depth,
        prefix_to_strip="0.",
    )
    by_name = {n: g for g in groups for n in g["names"]}
    assert by_name["0.pos_embed"]["wd_scale"] == 0 and by_name["0.blocks.0.norm1.weight"]["wd_scale"] == 0
    assert by_name["0.blocks.0.attn.qkv.bias"]["wd_scale"] == 0
    assert by_name["0.blocks.0.attn.qkv.weight"]["wd_scale"] == 1
    assert by_name["0.pos_embed"]["lr_scale"] == pytest.approx(0.5**3)
    assert by_name["0.blocks.1.mlp.fc1.weight"]["lr_scale"] == pytest.approx(0.5)
    assert by_name["1.weight"]["lr_scale"] == 1.0
    n_params = sum(len(g["params"]) for g in groups)
    assert n_params == sum(1 for p in head.parameters() if p.requires_grad)
    opt = build_adamw(groups, OptimConfig())
    apply_schedules(opt, lr=1e-3, weight_decay=0.1)
    g = next(g for g in opt.param_groups if "0.pos_embed" in g["names"])
    assert g["lr"] == pytest.approx(1e-3 * 0.5**3) and g["weight_decay"] == 0
    head(torch.randn(2, 1, 32, 32)).sum().backward()
    norm = clip_gradients(head.parameters(), 1e-3)
    total = torch.stack([p.grad.norm() for p in head.parameters() if p.grad is not None]).norm()
    assert norm > 1e-3 and float(total) == pytest.approx(1e-3, rel=1e-3)
