"""Few-shot sweeps whose methods start from other weights (``cmrfm fewshot --start``)."""

import csv

import pytest
from tiny import TINY, tiny_config

from cmrfm.engine.checkpoint import load_card
from cmrfm.engine.fewshot import FewshotConfig, _chain_origin, run_fewshot
from cmrfm.engine.finetune import finetune
from cmrfm.errors import ConfigError
from cmrfm.models.factory import build_backbone, save_backbone


def _cine_models(tmp_path):
    """One sax-seg model per start and seed: from a saved backbone, and from random weights."""
    model = build_backbone("tiny", img_size=32, **TINY)
    backbone = save_backbone(model, tmp_path / "backbone.safetensors", card={"objective": "mae"})
    for seed in range(2):
        for method, init in (("pretrained", str(backbone)), ("scratch", None)):
            out = tmp_path / "sax" / method / f"s{seed}"
            finetune(tiny_config("sax-seg", out, steps=1, seed=seed, init=init), progress=False)
    runs = tmp_path / "sax"
    starts = {m: str(runs / m / "s{seed}" / "model.safetensors") for m in ("pretrained", "scratch")}
    return backbone, starts


def test_each_method_and_seed_starts_from_its_own_cine_model(tmp_path):
    _, starts = _cine_models(tmp_path)
    base = tiny_config("lge-seg", steps=1)
    methods = ["pretrained", "scratch"]
    cfg = FewshotConfig(ks=[1], seeds=2, methods=methods, out=str(tmp_path / "lge"), base=base)
    cfg.inits = starts
    rows = run_fewshot(cfg, progress=False)
    assert [(r["method"], r["seed"]) for r in rows] == [
        ("pretrained", 0),
        ("scratch", 0),
        ("pretrained", 1),
        ("scratch", 1),
    ]
    for row in rows:
        start = starts[row["method"]].replace("{seed}", str(row["seed"]))
        assert row["init"] == start  # the row names the weights its run started from
        card = load_card(tmp_path / "lge" / row["method"] / f"k1_s{row['seed']}" / "model.safetensors")
        assert card["transfer"]["from_task"] == "sax-seg"  # the decoder came over, not only a backbone
        assert card["init"] == ("sax-seg (mae)" if row["method"] == "pretrained" else "sax-seg (scratch)")
    with (tmp_path / "lge" / "fewshot.csv").open() as handle:
        assert {r["init"] for r in csv.DictReader(handle)} == {
            starts[m].replace("{seed}", str(s)) for m in starts for s in range(2)
        }


def test_a_start_must_match_the_name_of_its_method(tmp_path):
    backbone, starts = _cine_models(tmp_path)
    base = tiny_config("lge-seg", steps=1)

    def sweep(method, weights):
        cfg = FewshotConfig(ks=[1], seeds=1, methods=[method], out=str(tmp_path / "bad"), base=base)
        cfg.inits = {method: weights}
        return run_fewshot(cfg, progress=False)

    # a "scratch" start fine-tuned from the backbone, or the backbone itself, would mislabel the curve
    with pytest.raises(ConfigError, match=r"inits\.scratch: .*s0.*'mae'.*must come from random weights"):
        sweep("scratch", starts["pretrained"])
    with pytest.raises(ConfigError, match=r"inits\.scratch: .*backbone\.safetensors.*'backbone'"):
        sweep("scratch", str(backbone))
    with pytest.raises(ConfigError, match=r"inits\.pretrained: .*'scratch'.*must not come from random"):
        sweep("pretrained", starts["scratch"])
    with pytest.raises(ConfigError, match=r"inits\.pretrained: .*s7.*does not exist"):
        sweep("pretrained", str(tmp_path / "sax" / "pretrained" / "s7" / "model.safetensors"))
    with pytest.raises(ConfigError, match="baseline trains from scratch"):
        sweep("baseline", starts["scratch"])
    assert not (tmp_path / "bad").exists() or not any((tmp_path / "bad").rglob("model.safetensors"))
    # a start given for a method the sweep does not run, or beside --via, is an error, not ignored
    cfg = FewshotConfig(ks=[1], seeds=1, methods=["scratch"], out=str(tmp_path / "bad"), base=base)
    cfg.inits = {"pretrained": starts["pretrained"]}
    with pytest.raises(
        ConfigError, match=r"inits for pretrained: not among this sweep's methods \(scratch\)"
    ):
        run_fewshot(cfg, progress=False)
    cfg.inits, cfg.via = {"scratch": starts["scratch"]}, str(tmp_path / "seg")
    with pytest.raises(ConfigError, match="inits and via both set the start"):
        run_fewshot(cfg, progress=False)


def test_chain_origin_reads_through_nested_starts():
    """A model started from a model started from random weights is still a scratch chain."""
    assert _chain_origin("scratch") == "scratch"
    assert _chain_origin("mae") == "mae"
    assert _chain_origin("sax-seg (scratch)") == "scratch"
    assert _chain_origin("lge-seg (sax-seg (scratch))") == "scratch"
    assert _chain_origin("lge-seg (sax-seg (mae))") == "mae"
