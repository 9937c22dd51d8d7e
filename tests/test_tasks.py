"""Every registered task builds, trains a few steps and evaluates on its tiny synthetic data."""

import dataclasses
import math

import pytest
import torch
from tiny import TINY, tiny_config

from cmrfm.engine.finetune import FinetuneConfig, build_task, finetune, load_task_model
from cmrfm.errors import CmrfmError
from cmrfm.tasks import TASKS
from cmrfm.tasks.base import BaselineModel


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


def test_disease_features_from_a_file(tmp_path):
    """``features=file`` takes each subject's features from a CSV (e.g. of predicted masks)."""
    import csv

    import numpy as np

    from cmrfm.clinical.features import FEATURE_NAMES

    path = tmp_path / "features.csv"
    subjects = [f"phantom{i:02d}" for i in range(6)]
    with path.open("w", newline="") as handle:
        writer = csv.writer(handle)
        writer.writerow(["subject", *FEATURE_NAMES])
        for i, subject in enumerate(subjects):
            writer.writerow([subject, *[i + k / 100 for k in range(len(FEATURE_NAMES))]])
    task = build_task("disease-cls", {"features": "file", "features_file": str(path)})
    data = task.synthetic_data()
    item = data.make_dataset(["phantom03"], False)[0]
    assert np.allclose(item["features"], [3 + k / 100 for k in range(len(FEATURE_NAMES))])
    path.write_text(path.read_text().rsplit("\n", 2)[0] + "\n")  # drop the last subject's row
    with pytest.raises(CmrfmError, match=r"features\.csv.*no feature row for 1 subject"):
        build_task("disease-cls", {"features": "file", "features_file": str(path)}).synthetic_data()
    path.write_text("subject,log_lv_edv\nphantom00,1\n")
    with pytest.raises(CmrfmError, match="missing column"):
        build_task("disease-cls", {"features": "file", "features_file": str(path)}).synthetic_data()
    with pytest.raises(CmrfmError, match="features_file"):
        build_task("disease-cls", {"features": "file"}).synthetic_data()


def test_chain_items_reads_parts_as_one_sequence():
    from cmrfm.tasks.mixed import ChainItems

    chain = ChainItems([[{"i": 0}, {"i": 1}], [], [{"i": 2}]])
    assert len(chain) == 3 and [chain[k]["i"] for k in range(3)] == [0, 1, 2] and chain[-1]["i"] == 2
    with pytest.raises(IndexError):
        chain[3]


def test_oversampled_items_repeat_only_the_chosen():
    from cmrfm.tasks.mixed import OversampledItems

    items = [{"i": i} for i in range(4)]
    over = OversampledItems(items, chosen=[1, 3], repeats=3)
    assert len(over) == 8 and sorted(over[k]["i"] for k in range(8)) == [0, 1, 1, 1, 2, 3, 3, 3]
    assert len(OversampledItems(items, [1], 1)) == 4
    with pytest.raises(ValueError, match="repeats"):
        OversampledItems(items, [1], 0)


def test_lge_seg_oversamples_scar_slices_for_training_only():
    task = build_task("lge-seg", {"lesion_oversample": 3})
    data = task.synthetic_data()
    plain = data.make_dataset(data.subjects, False)
    train = data.make_dataset(data.subjects, True)
    scar = [i for i in range(len(plain)) if (plain[i]["mask"] >= 3).any()]
    assert scar and len(scar) < len(plain)
    assert len(train) == len(plain) + 2 * len(scar)


def test_lge_seg_heart_zoom_trains_evaluates_and_travels_in_the_card(tmp_path):
    cfg = tiny_config("lge-seg", tmp_path / "run", task_options={"heart_zoom": 0.75, "heart_zoom_prob": 1.0})
    result = finetune(cfg, progress=False)
    assert math.isfinite(result.eval.metrics["dice_mean"])
    model, _ = load_task_model(result.weights)
    assert model.task.config.heart_zoom == 0.75  # analysis reads it from the card
    data = model.task.synthetic_data()
    train = model.task._dataset(data.make_dataset(data.subjects, False).items, True)
    assert train.items.prob == 1.0 and train.items.fill == 0.75


def test_class_weighted_cross_entropy():
    task = build_task("sax-seg", {"ce_class_weights": [1.0, 1.0, 1.0, 5.0], "dice_weight": 0.0})
    plain = build_task("sax-seg", {"dice_weight": 0.0})
    logits = torch.zeros(1, 4, 2, 2)
    target = torch.tensor([[[0, 3], [3, 3]]])
    # uniform logits: every pixel costs log(4); weighting changes the weighted mean only by class mix
    assert task._seg_loss(logits, target).item() == pytest.approx(math.log(4))
    logits[0, 0] = 2.0  # background favoured: the RV pixels now cost more, and count 5x
    per_pixel = torch.nn.functional.cross_entropy(logits, target, reduction="none")[0]
    expected = (per_pixel[0, 0] + 5 * per_pixel[target[0] == 3].sum()) / (1 + 5 * 3)
    assert task._seg_loss(logits, target).item() == pytest.approx(expected.item(), rel=1e-5)
    assert task._seg_loss(logits, target).item() > plain._seg_loss(logits, target).item()
    with pytest.raises(CmrfmError, match="ce_class_weights has 2 values"):
        build_task("sax-seg", {"ce_class_weights": [1.0, 2.0]})._seg_loss(logits, target)


def test_prior_correction_takes_the_class_weights_back_out_at_inference():
    weights = [1.0, 1.0, 1.0, 4.0]
    corrected = build_task("sax-seg", {"ce_class_weights": weights})
    uncorrected = build_task("sax-seg", {"ce_class_weights": weights, "prior_correction": False})
    logits = torch.zeros(2, 4, 3, 3)
    logits[:, 3] = 1.0  # RV ahead by 1 < log(4): the correction hands these pixels to background
    out = corrected.adjust_outputs({"logits": logits}, training=False)["logits"]
    assert torch.allclose(out[:, 3], torch.full((2, 3, 3), 1.0 - math.log(4.0)))
    assert torch.equal(out[:, :3], logits[:, :3])
    assert (logits.argmax(1) == 3).all() and (out.argmax(1) == 0).all()
    for task, training in ((corrected, True), (uncorrected, False), (build_task("sax-seg"), False)):
        assert task.adjust_outputs({"logits": logits}, training)["logits"] is logits
    # a model applies it in eval mode only, whatever its architecture
    model = BaselineModel(corrected, corrected.build_baseline(32))
    batch = {"image": torch.randn(1, 1, 32, 32)}
    model.train()
    raw = model(batch)["logits"]
    model.eval()
    shift = raw - model(batch)["logits"]  # dropout-free net: the difference is the log prior
    assert torch.allclose(shift[0, :, 0, 0], torch.log(torch.tensor(weights)), atol=1e-5)
    with pytest.raises(CmrfmError, match="must be positive"):
        build_task("sax-seg", {"ce_class_weights": [1.0, 0.0, 1.0, 1.0]}).adjust_outputs(
            {"logits": logits}, False
        )


def test_classification_class_weights_and_prior_correction():
    task = build_task("lge-infarct", {"ce_class_weights": [3.0, 1.0], "label_smoothing": 0.0})
    plain = build_task("lge-infarct", {"label_smoothing": 0.0})
    logits = torch.tensor([[0.0, 1.0], [2.0, 0.0]])
    labels = torch.tensor([0, 1])
    per_item = torch.nn.functional.cross_entropy(logits, labels, reduction="none")
    expected = (3 * per_item[0] + per_item[1]) / 4
    assert task.loss({"logits": logits}, {"label": labels}).item() == pytest.approx(expected.item())
    assert plain.loss({"logits": logits}, {"label": labels}).item() == pytest.approx(per_item.mean().item())
    out = task.adjust_outputs({"logits": logits}, training=False)["logits"]  # (B, K): no spatial dims
    assert torch.allclose(out, logits - torch.log(torch.tensor([[3.0, 1.0]])))
    with pytest.raises(CmrfmError, match="has 3 values; lge-infarct has 2 classes"):
        build_task("lge-infarct", {"ce_class_weights": [1.0, 1.0, 1.0]}).loss(
            {"logits": logits}, {"label": labels}
        )


def test_sax_seg_simulated_subjects_train_but_never_evaluate(acdc_root):
    import numpy as np

    from cmrfm.engine.finetune import split_subjects

    task = build_task("sax-seg", {"root": str(acdc_root), "sim_subjects": 2, "sim_frames": 3})
    data = task.load_data()
    assert len(data.train_only) == 2 and not set(data.train_only) & set(data.subjects)
    for fold in (0, 3, -1):
        train, held_out = split_subjects(data, FinetuneConfig(task="sax-seg", fold=fold))
        assert set(data.train_only) <= set(train) and not set(data.train_only) & set(held_out)
    sim_items = data.make_dataset(data.train_only, False)
    assert 0 < len(sim_items) <= 2 * 3 * 4  # subjects × kept frames × sim_per_series
    masks = [sim_items[k]["mask"].numpy() for k in range(len(sim_items))]
    assert sim_items[0]["image"].shape == (1, 128, 128) and masks[0].shape == (128, 128)
    assert set(np.unique(np.stack(masks))) == {0, 1, 2, 3}  # LV, MYO, RV in the SAX class indices
    mixed = data.make_dataset([data.subjects[0], data.train_only[0]], True)
    assert len(mixed) == len(data.make_dataset([data.subjects[0]], True)) + len(
        data.make_dataset([data.train_only[0]], True)
    )


def test_disease_from_features_only_skips_the_backbone(tmp_path):
    """``images=false``: the head sees the (batch-normalised) features alone; images are ignored."""
    cfg = tiny_config("disease-cls", tmp_path / "run", steps=3, batch_size=4, task_options={"images": False})
    result = finetune(cfg, progress=False)
    model, card = load_task_model(result.weights)
    assert model.head.pool is None and model.head.fc.in_features == 64
    # the backbone is never run, so the file holds the head alone
    assert card["backbone_stored"] is False and result.weights.stat().st_size < 50_000
    batch = model.task.collate([model.task.synthetic_data().make_dataset(["phantom00"], False)[0]] * 2)
    model.eval()
    with torch.no_grad():
        before = model(batch)["logits"]
        batch["images"] = torch.randn_like(batch["images"])  # other images, same features
        assert torch.equal(model(batch)["logits"], before)
    with pytest.raises(CmrfmError, match="needs features"):
        assert build_task("disease-cls", {"images": False, "features": "none"}).uses_images


def test_disease_logistic_head_fitted_exactly_by_lbfgs(tmp_path):
    """``solver=lbfgs``: no gradient steps; the exported head computes the fitted logistic regression."""
    import numpy as np

    from cmrfm.tasks.disease_cls import GROUPS, fit_logistic

    options = {"images": False, "feature_hidden": 0, "solver": "lbfgs", "l2": 0.05}
    cfg = FinetuneConfig(
        task="disease-cls",
        synthetic=True,
        image_size=32,
        backbone=TINY,
        steps=50,
        batch_size=4,
        folds=2,
        fold=0,
        out=str(tmp_path / "run"),
        amp="off",
        task_options=options,
    )
    result = finetune(cfg, progress=False)
    model, card = load_task_model(result.weights)
    assert card["steps"] == 0 and "exact fit" in card["solver"]
    from cmrfm.clinical.bundle import ModelBundle

    loaded = ModelBundle.from_files({"disease-cls": result.weights}).models["disease-cls"]
    assert loaded.trained and loaded.version()["trained"]  # fitted without steps is not "random weights"
    assert not (tmp_path / "run" / "train_log.csv").exists()
    data = model.task.synthetic_data()
    train = data.make_dataset(result.train_subjects, True)
    x = np.stack([np.asarray(train[i]["features"], np.float64) for i in range(len(train))])
    y = np.array([int(train[i]["label"]) for i in range(len(train))])
    weight, bias = fit_logistic((x - x.mean(0)) / np.sqrt(x.var(0) + 1e-5), y, len(GROUPS), 0.05)
    test_items = [train[i] for i in range(len(train))]
    with torch.no_grad():
        logits = model(model.task.collate(test_items))["logits"].double().numpy()
    expected = (x - x.mean(0)) / np.sqrt(x.var(0) + 1e-5) @ weight + bias
    np.testing.assert_allclose(logits, expected, atol=2e-2 * max(1.0, np.abs(expected).max()))  # fp16 export
    with pytest.raises(CmrfmError, match="solver=lbfgs fits logistic regression"):
        options = {"images": False, "solver": "lbfgs"}  # the MLP head (feature_hidden=64) is no logistic fit
        bad = dataclasses.replace(cfg, out=str(tmp_path / "bad"), task_options=options)
        finetune(bad, progress=False)
