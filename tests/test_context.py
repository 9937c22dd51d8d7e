"""2.5D context: neighbour channels in stack order, and 1-channel models grown with unchanged output."""

import numpy as np
import pytest
import torch
from tiny import tiny_config

from cmrfm.engine.finetune import FinetuneConfig, build_model, build_task, finetune, load_task_model
from cmrfm.errors import ConfigError
from cmrfm.tasks.context import ContextItems, neighbour_indices, stack_with_neighbours
from cmrfm.tasks.items import ItemDataset


def test_neighbours_repeat_the_stack_ends():
    assert neighbour_indices([10, 11, 12], 1) == [[10, 10, 11], [10, 11, 12], [11, 12, 12]]
    assert neighbour_indices([4], 2) == [[4, 4, 4, 4, 4]]
    images = np.arange(5, dtype=np.float32)[:, None, None] * np.ones((1, 2, 2), np.float32)  # slice i = i
    stacked = stack_with_neighbours(images, ["a", "a", "a", "b", "b"], 1)  # (5, 3, 2, 2)
    assert stacked.shape == (5, 3, 2, 2)
    assert stacked[:, :, 0, 0].tolist() == [[0, 0, 1], [0, 1, 2], [1, 2, 2], [3, 3, 4], [3, 4, 4]]


def test_context_items_follow_slice_order_within_each_volume():
    def item(volume: str, z: int) -> dict:
        return {
            "image": np.full((4, 4), 10 * z + (volume == "b"), np.float32),
            "mask": np.full((4, 4), z),
            "volume": volume,
            "slice": z,
            "subject": volume,
        }

    items = [item("a", 2), item("b", 0), item("a", 0), item("a", 1), item("b", 1)]  # shuffled
    ctx = ContextItems(items, 1)
    channels = [ctx[i]["image"][:, 0, 0].tolist() for i in range(len(items))]
    assert channels[0] == [10, 20, 20]  # a/2: a/1, itself, repeated end
    assert channels[2] == [0, 0, 10] and channels[3] == [0, 10, 20]
    assert channels[1] == [1, 1, 11] and channels[4] == [1, 11, 11]  # b never reads a
    assert (ctx[3]["mask"] == 1).all()  # labels stay the centre slice's
    with pytest.raises(ValueError, match="context"):
        ContextItems(items, 0)
    sample = ItemDataset(ctx, train=True)[0]  # augmentation keeps the channels
    assert sample["image"].shape == (3, 4, 4) and sample["mask"].shape == (4, 4)


def test_a_2d_model_grows_channels_without_changing_its_output(tmp_path):
    flat = finetune(tiny_config("lge-seg", tmp_path / "2d"), progress=False)
    source, _ = load_task_model(flat.weights)
    task = build_task("lge-seg", {"context_slices": 1})
    grown, card = build_model(task, FinetuneConfig(task="lge-seg", init=str(flat.weights)))
    assert grown.backbone.cfg.in_chans == 3
    assert card["transfer"]["head_tensors_transferred"] == card["transfer"]["head_tensors"]
    source.eval()
    grown.eval()
    x = torch.randn(2, 3, 32, 32)
    with torch.no_grad():
        expected = source({"image": x[:, 1:2]})["logits"]
        got = grown({"image": x})["logits"]
    torch.testing.assert_close(got, expected, atol=1e-5, rtol=1e-5)
    # inflated: every channel shares the weight, so a stack of one repeated slice reads as that slice
    inflated, _ = build_model(
        build_task("lge-seg", {"context_slices": 1, "context_init": "inflate"}),
        FinetuneConfig(task="lge-seg", init=str(flat.weights)),
    )
    inflated.eval()
    with torch.no_grad():
        same = inflated({"image": x[:, 1:2].repeat(1, 3, 1, 1)})["logits"]
        mixed = inflated({"image": x})["logits"]
    torch.testing.assert_close(same, expected, atol=1e-5, rtol=1e-5)
    assert not torch.allclose(mixed, expected, atol=1e-3)  # it reads the neighbours from the start
    with pytest.raises(ConfigError, match="context_init"):
        build_model(
            build_task("lge-seg", {"context_slices": 1, "context_init": "copy"}),
            FinetuneConfig(task="lge-seg", init=str(flat.weights)),
        )
    # trained with context, the model card brings the channels back
    run = finetune(
        tiny_config("lge-seg", tmp_path / "ctx", init=str(flat.weights), task_options={"context_slices": 1}),
        progress=False,
    )
    model, _ = load_task_model(run.weights)
    assert model.backbone.cfg.in_chans == 3 and model.task.input_channels == 3
    assert np.isfinite(run.eval.metrics["dice_mean"])


def test_bad_context_and_zoom_options_are_config_errors():
    for options, name in (
        ({"context_slices": -1}, "context_slices"),
        ({"heart_zoom": 1.5}, "heart_zoom"),
        ({"heart_zoom_prob": -0.1}, "heart_zoom_prob"),
    ):
        with pytest.raises(ConfigError, match=name):
            build_task("lge-seg", options)


def test_lesionmix_and_context_do_not_mix():
    task = build_task("lge-seg", {"context_slices": 1, "lesionmix": 0.5})
    data = task.synthetic_data()
    with pytest.raises(ConfigError, match="context_slices"):
        data.make_dataset(data.subjects, True)


def test_analysis_reads_each_slice_with_its_volume_neighbours(tmp_path):
    import shutil

    from cmrfm.clinical.bundle import ModelBundle
    from cmrfm.tasks.kinds import TTA_FLIPS, TestTimeView

    run = finetune(
        tiny_config("lge-seg", tmp_path / "ctx", steps=1, task_options={"context_slices": 1}), progress=False
    )
    folder = tmp_path / "weights"
    folder.mkdir()
    shutil.copy(run.weights, folder / "lge-seg.safetensors")
    shutil.copy(run.weights.with_suffix(".json"), folder / "lge-seg.json")
    bundle = ModelBundle.load(folder, tasks=["lge-seg"], jitter=False, amp="off")
    images = np.random.default_rng(0).random((4, 32, 32)).astype(np.float32)
    got = bundle.segment("lge-seg", images, groups=[0, 0, 1, 1]).probs
    model = bundle.models["lge-seg"].model
    x = torch.as_tensor(stack_with_neighbours(images, [0, 0, 1, 1], 1))  # (4, 3, 32, 32)
    with torch.no_grad():
        views = [TestTimeView(flip=f) for f in TTA_FLIPS]  # LGE stacks always get the flips
        expected = sum(v.invert(torch.softmax(model({"image": v.apply(x)})["logits"], 1)) for v in views) / 4
    np.testing.assert_allclose(got, expected.numpy(), atol=1e-5)
