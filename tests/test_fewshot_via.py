"""Few-shot runs that work from a segmentation run (``cmrfm fewshot --via``) and the disease
features of a segmentation model's masks (``disease-cls`` ``features=segmentation``)."""

import csv
import json

import numpy as np
import pytest
import torch
from tiny import tiny_config

from cmrfm.constants import ML_PER_MM3
from cmrfm.engine.fewshot import FewshotConfig, run_fewshot
from cmrfm.engine.finetune import build_task, export_model, finetune, load_task_model
from cmrfm.errors import CmrfmError, ConfigError
from cmrfm.tasks.sax_seg import SAX_LABELS


def _constant_sax_model(tmp_path, class_index: int):
    """A sax-seg model (tiny ViT) whose decoder draws ``class_index`` on every pixel."""
    result = finetune(tiny_config("sax-seg", tmp_path / "seg", steps=1), progress=False)
    model, card = load_task_model(result.weights)
    with torch.no_grad():
        for conv in model.head.heads:  # every output resolution: class_index wins by 20 logits
            conv.weight.zero_()
            conv.bias.zero_()
            conv.bias[class_index] = 20.0
    keep = {k: card[k] for k in ("mode", "model", "seed", "fold", "steps")}
    return export_model(
        model, tmp_path / f"constant{class_index}.safetensors", keep, fp16=False, image_size=32
    )


def test_disease_features_from_a_segmentation_models_masks(tmp_path):
    """Every pixel drawn as RV: RV volumes of the whole stack, no LV, mapped to internal labels."""
    rv = SAX_LABELS.index(3)  # class index of the RV (internal label 3)
    weights = _constant_sax_model(tmp_path, rv)
    task = build_task(
        "disease-cls", {"features": "segmentation", "seg_weights": str(weights), "images": False}
    )
    data = task.synthetic_data(num_subjects=6, image_size=32)
    first = data.subjects[0]
    dataset = data.make_dataset([first], False)
    features = np.asarray(dataset[0]["features"], np.float64)
    # phantom stacks: 3 slices of 32 x 32 at 1.5 x 1.5 x 8 mm, ED and ES alike
    rv_ml = 32 * 32 * 3 * 1.5 * 1.5 * 8.0 * ML_PER_MM3
    from cmrfm.clinical.features import FEATURE_NAMES

    value = dict(zip(FEATURE_NAMES, features, strict=True))
    assert value["log_rv_edv"] == pytest.approx(np.log1p(rv_ml), rel=1e-5)
    assert value["log_rv_esv"] == pytest.approx(np.log1p(rv_ml), rel=1e-5)
    assert value["rv_ef"] == 0 and value["log_lv_edv"] == 0 and value["log_lv_mass"] == 0
    # drawn only for the subjects a run uses: the others wait
    assert set(task._stacks) == set(data.subjects) - {first}


def test_segmentation_features_need_a_sax_seg_model(tmp_path):
    with pytest.raises(CmrfmError, match=r"missing\.safetensors.*seg_weights"):
        build_task(
            "disease-cls", {"features": "segmentation", "seg_weights": str(tmp_path / "missing.safetensors")}
        ).synthetic_data()
    lge = finetune(tiny_config("lge-seg", tmp_path / "lge", steps=1), progress=False).weights
    with pytest.raises(CmrfmError, match="needs a sax-seg model, this one is 'lge-seg'"):
        build_task("disease-cls", {"features": "segmentation", "seg_weights": str(lge)}).synthetic_data()


def _sweep(tmp_path, task, methods, **kw):
    base = tiny_config(task, steps=1, **kw)
    return FewshotConfig(ks=[1], seeds=1, methods=methods, out=str(tmp_path / task), base=base)


def test_lge_infarct_sweep_via_an_lge_seg_sweep(tmp_path):
    """Each lge-infarct run starts its scar head from the lge-seg run of the same method, k, seed."""
    seg = _sweep(tmp_path, "lge-seg", ["scratch"], task_options={"conv_skip_stages": 1})
    run_fewshot(seg, progress=False)
    cfg = _sweep(tmp_path, "lge-infarct", ["scratch"], eval_unused=True)
    cfg.via = seg.out
    rows = run_fewshot(cfg, progress=False)
    seg_run = tmp_path / "lge-seg" / "scratch" / "k1_s0"
    assert rows[0]["via_run"] == str(seg_run) and rows[0]["via_steps"] == 1
    # evaluated on every case but the one it trained on
    cases = build_task("lge-infarct").synthetic_data().subjects
    assert rows[0]["eval_unused"] is True and rows[0]["eval_subjects"] == len(cases) - 1
    config = (tmp_path / "lge-infarct" / "scratch" / "k1_s0" / "config.yaml").read_text()
    assert f"init: {seg_run / 'model.safetensors'}" in config
    assert "head: scar" in config and "conv_skip_stages: 1" in config  # read from the lge-seg card
    card = json.loads((tmp_path / "lge-infarct" / "scratch" / "k1_s0" / "model.json").read_text())
    assert card["transfer"]  # backbone and decoder came from the segmentation model
    with (tmp_path / "lge-infarct" / "fewshot.csv").open() as handle:
        assert next(csv.DictReader(handle))["via_run"] == str(seg_run)
    # collected without eval_unused=true, the row still says how the run was evaluated
    collect = _sweep(tmp_path, "lge-infarct", ["scratch"])
    collect.via, collect.train_missing = seg.out, False
    assert run_fewshot(collect, progress=False)[0]["eval_unused"] is True


def test_via_errors_name_what_is_wrong(tmp_path):
    seg = _sweep(tmp_path, "lge-seg", ["scratch"])
    cfg = _sweep(tmp_path, "lge-infarct", ["scratch"])
    cfg.via = seg.out
    with pytest.raises(ConfigError, match=r"lge-seg[/\\]scratch[/\\]k1_s0: no finished segmentation run"):
        run_fewshot(cfg, progress=False)
    # a conventional (DynUNet) segmentation has no ViT decoder for the scar head
    seg.methods = ["baseline"]
    run_fewshot(seg, progress=False)
    cfg.methods = ["baseline"]
    with pytest.raises(ConfigError, match="conventional baseline"):
        run_fewshot(cfg, progress=False)
    # a classification task that draws other subjects than the segmentation task
    sax = _sweep(tmp_path, "sax-seg", ["scratch"])
    run_fewshot(sax, progress=False)
    disease = _sweep(tmp_path, "disease-cls", ["scratch"], task_options={"images": False})
    disease.via = sax.out
    with pytest.raises(ConfigError, match="draw different subjects"):
        run_fewshot(disease, progress=False)
    # a task with no product route from masks
    view = _sweep(tmp_path, "view-cls", ["baseline"])
    view.via = seg.out
    with pytest.raises(ConfigError, match="does not work from a segmentation model"):
        run_fewshot(view, progress=False)
