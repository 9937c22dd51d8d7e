import pytest
import torch

from cmrfm.errors import InputError
from cmrfm.models.factory import build_backbone, load_backbone, save_backbone
from cmrfm.models.vit import PRESETS, VisionTransformer, patchify, unpatchify, vit_config


def tiny(**kw):
    return vit_config("tiny", **{"depth": 4, "embed_dim": 48, "num_heads": 3, "img_size": 32, **kw})


@pytest.mark.parametrize("name", list(PRESETS))
def test_presets_build(name):
    cfg = vit_config(name)
    assert cfg.img_size == 128 and cfg.patch_size == 8 and cfg.in_chans == 1
    assert len(cfg.levels()) == 4 and cfg.levels()[-1] == cfg.depth - 1


def test_small_is_vit_s8():
    cfg = vit_config("small")
    assert (cfg.embed_dim, cfg.depth, cfg.num_heads, cfg.patch_size) == (384, 12, 6, 8)


def test_forward_features_shapes_and_other_resolution():
    torch.manual_seed(0)
    model = build_backbone(tiny())
    out = model.forward_features(torch.randn(2, 1, 32, 32))
    assert out.cls.shape == (2, 48) and out.patch_tokens.shape == (2, 16, 48) and out.grid == (4, 4)
    assert [lv.shape for lv in out.levels] == [(2, 48, 4, 4)] * 4
    out = model.forward_features(torch.randn(2, 1, 48, 64))  # interpolated position embeddings
    assert out.grid == (6, 8) and out.levels[0].shape == (2, 48, 6, 8)
    assert model(torch.randn(3, 1, 32, 32)).shape == (3, 48)
    with pytest.raises(ValueError, match="divisible"):
        model(torch.randn(1, 1, 30, 32))


def test_level_maps_match_tokens():
    model = build_backbone(tiny()).eval()
    out = model.forward_features(torch.randn(1, 1, 32, 32))
    last = out.levels[-1]  # last block, normed == patch tokens
    torch.testing.assert_close(last.flatten(2).transpose(1, 2), out.patch_tokens)


def test_matmul_and_sdpa_agree():
    torch.manual_seed(0)
    a = build_backbone(tiny(attention="matmul")).eval()
    b = build_backbone(tiny(attention="sdpa")).eval()
    b.load_state_dict(a.state_dict())
    x = torch.randn(2, 1, 32, 32)
    torch.testing.assert_close(a(x), b(x), atol=1e-5, rtol=1e-4)


def test_keep_and_mask_and_checkpointing():
    torch.manual_seed(0)
    model = build_backbone(tiny())
    x = torch.randn(2, 1, 32, 32)
    keep = torch.stack([torch.randperm(16)[:4] for _ in range(2)])
    out = model.forward_features(x, keep=keep)
    assert out.patch_tokens.shape == (2, 4, 48) and out.levels == []
    mask = torch.zeros(2, 16, dtype=torch.bool)
    mask[:, :5] = True
    assert model.forward_features(x, mask=mask).patch_tokens.shape == (2, 16, 48)
    model.eval()
    ref = model(x)
    model.set_grad_checkpointing(True)
    model.train()
    y = model(x)
    y.sum().backward()
    torch.testing.assert_close(y, ref)
    assert model.blocks[0].attn.qkv.weight.grad is not None


def test_layer_ids_and_no_weight_decay():
    model = build_backbone(tiny())
    assert model.layer_id("pos_embed") == 0
    assert model.layer_id("blocks.2.mlp.fc1.weight") == 3
    assert model.layer_id("norm.weight") == 5
    assert {"pos_embed", "cls_token"} <= model.no_weight_decay()


def test_patchify_roundtrip():
    x = torch.randn(2, 1, 32, 24)
    assert torch.equal(unpatchify(patchify(x, 8), 8, (4, 3)), x)


def test_bf16_autocast_runs():
    model = build_backbone(tiny())
    with torch.autocast("cpu", dtype=torch.bfloat16):
        out = model.forward_features(torch.randn(2, 1, 32, 32))
    assert out.cls.shape == (2, 48) and torch.isfinite(out.cls).all()


def test_save_load_roundtrip_and_wrong_architecture(tmp_path):
    model = build_backbone(tiny())
    path = save_backbone(model, tmp_path / "w.safetensors", card={"objective": "dino", "steps": 3})
    loaded, card = load_backbone(path)
    assert card["objective"] == "dino" and card["architecture"]["config"]["embed_dim"] == 48
    for k, v in model.state_dict().items():
        assert torch.equal(v, loaded.state_dict()[k])
    (tmp_path / "w.json").unlink()  # the embedded card is used when the JSON beside it is gone
    _, card2 = load_backbone(path)
    assert card2["steps"] == 3
    with pytest.raises(InputError, match="another architecture"):
        load_backbone(path, expected=tiny(embed_dim=96))
    resized, _ = load_backbone(path, img_size=48)  # position embeddings resized to a 6×6 grid
    assert resized.pos_embed.shape == (1, 37, 48) and resized.cfg.img_size == 48
    x = torch.randn(1, 1, 48, 48)
    torch.testing.assert_close(resized(x), loaded(x), atol=1e-5, rtol=1e-4)  # same as on-the-fly resizing
    half = save_backbone(model, tmp_path / "h.safetensors", fp16=True)
    assert half.stat().st_size < path.stat().st_size
    with pytest.raises(InputError, match="not found"):
        load_backbone(tmp_path / "nope.safetensors")


def test_is_module():
    assert isinstance(build_backbone("tiny"), VisionTransformer)


def test_compiled_blocks_match_eager_and_keep_state_keys():
    from cmrfm.models.vit import compile_blocks

    torch.manual_seed(0)
    eager = VisionTransformer(vit_config("tiny", embed_dim=32, depth=2, num_heads=2, img_size=32))
    compiled = VisionTransformer(eager.cfg)
    compiled.load_state_dict(eager.state_dict())
    assert compile_blocks(compiled) == 2
    assert list(compiled.state_dict()) == list(eager.state_dict())
    x = torch.randn(3, 1, 32, 32)
    outs = []
    for model in (eager, compiled):
        model.train()
        y = model.forward_features(x)
        (y.cls.pow(2).sum() + sum(level.mean() for level in y.levels)).backward()
        outs.append((y.cls.detach(), model.blocks[0].mlp.fc1.weight.grad.clone()))
    torch.testing.assert_close(outs[0][0], outs[1][0], atol=1e-4, rtol=1e-4)
    torch.testing.assert_close(outs[0][1], outs[1][1], atol=1e-4, rtol=1e-4)
