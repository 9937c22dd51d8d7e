import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

from cmrfm.config import build_config
from cmrfm.data.shards import ShardWriter
from cmrfm.engine.checkpoint import load_checkpoint
from cmrfm.errors import ConfigError, InputError
from cmrfm.models.factory import load_backbone
from cmrfm.pretrain.config import PretrainConfig
from cmrfm.pretrain.export import export_run
from cmrfm.pretrain.loop import pretrain

TINY = [
    "model.depth=2",
    "model.embed_dim=48",
    "model.num_heads=3",
    "model.img_size=32",
    "model.drop_path_rate=0.1",
    "data.image_size=40",
    "batch_size=4",
    "dino.crops.global_size=32",
    "dino.crops.local_size=16",
    "dino.crops.n_local=2",
    "dino.out_dim=64",
    "dino.hidden_dim=32",
    "dino.bottleneck_dim=16",
    "dino.freeze_last_layer_steps=2",
    "mae.decoder_dim=32",
    "mae.decoder_depth=1",
    "optim.warmup_steps=2",
    "optim.lr=1e-3",
    "threads=1",
    "log_every=2",
]


@pytest.fixture(autouse=True)
def _restore_threads():
    n = torch.get_num_threads()
    yield
    torch.set_num_threads(n)


def config(tmp_path, *extra, name="run"):
    return build_config(PretrainConfig, overrides=[*TINY, f"out={tmp_path / name}", *extra])


def states_equal(a, b):
    assert a.keys() == b.keys()
    return all(torch.equal(a[k], b[k]) for k in a)


@pytest.mark.parametrize("objective", ["dino", "mae"])
def test_runs_logs_checkpoints_and_exports(tmp_path, objective):
    extra = ["dino.ibot=true", "dino.koleo_weight=0.1"] if objective == "dino" else []
    cfg = config(
        tmp_path,
        f"objective={objective}",
        "steps=4",
        "ckpt_every=2",
        "probe.every=4",
        "probe.max_images=24",
        *extra,
    )
    result = pretrain(cfg)
    assert result.steps == 4 and torch.isfinite(torch.tensor(result.last_loss))
    run = tmp_path / "run"
    rows = (run / "log.csv").read_text().splitlines()
    assert rows[0].startswith("step,loss,lr") and len(rows) == 3
    assert set(result.probes) == {0, 4} and 0 <= result.probes[4]["knn_acc"] <= 1
    assert result.gflops_per_s > 0
    path, _ = export_run(run, tmp_path / "w.safetensors")
    model, card2 = load_backbone(path)
    assert card2["objective"] == objective and card2["steps"] == 4 and card2["images_seen"] == 16
    assert "4" in card2["probe"] or 4 in card2["probe"]
    state = load_checkpoint(run / "checkpoints" / "last.pt")
    prefix = "teacher_backbone." if objective == "dino" else "backbone."
    for k, v in model.state_dict().items():
        assert torch.equal(v, state["objective"][prefix + k])


def test_resume_is_exact_and_dino_pieces_behave(tmp_path):
    full = config(tmp_path, "steps=6", "ckpt_every=100", "dino.ibot=true", name="full")
    pretrain(full)
    part = config(tmp_path, "steps=6", "ckpt_every=100", "dino.ibot=true", "stop_at_step=3", name="part")
    assert pretrain(part).steps == 3
    mid = load_checkpoint(tmp_path / "part" / "checkpoints" / "last.pt")
    assert mid["step"] == 3
    with pytest.raises(ConfigError, match="--resume"):
        pretrain(config(tmp_path, "steps=6", "dino.ibot=true", name="part"))
    pretrain(config(tmp_path, "steps=6", "ckpt_every=100", "dino.ibot=true", name="part"), resume=True)
    a = load_checkpoint(tmp_path / "full" / "checkpoints" / "last.pt")
    b = load_checkpoint(tmp_path / "part" / "checkpoints" / "last.pt")
    assert states_equal(a["objective"], b["objective"])
    assert a["data"] == b["data"]
    # the head's last layer was frozen for 2 steps; the teacher moved away from its initial copy
    step0 = load_checkpoint(tmp_path / "full" / "checkpoints" / "last.pt")["objective"]
    assert not torch.equal(step0["teacher_backbone.pos_embed"], step0["backbone.pos_embed"])


def test_compiled_run_matches_the_eager_run(tmp_path):
    """compile=true trains like eager mode (fp32, so only fusion rounding differs)."""
    common = ("objective=mae", "steps=2", "precision=fp32")
    eager = pretrain(config(tmp_path, *common, name="eager"))
    compiled = pretrain(config(tmp_path, *common, "compile=true", name="compiled"))
    assert compiled.last_loss == pytest.approx(eager.last_loss, rel=1e-4)
    a = load_checkpoint(tmp_path / "eager" / "checkpoints" / "last.pt")["objective"]
    b = load_checkpoint(tmp_path / "compiled" / "checkpoints" / "last.pt")["objective"]
    assert a.keys() == b.keys()
    for key in a:
        torch.testing.assert_close(a[key], b[key], atol=1e-4, rtol=1e-3)


def test_resume_other_architecture_is_a_clear_error(tmp_path):
    pretrain(config(tmp_path, "steps=2", "objective=mae"))
    with pytest.raises(ConfigError, match="another architecture"):
        pretrain(config(tmp_path, "steps=4", "objective=mae", "model.embed_dim=96"), resume=True)


def test_sources_shards_and_faults(tmp_path):
    import numpy as np

    rng = np.random.default_rng(0)
    with ShardWriter(tmp_path / "shards", images_per_shard=5) as w:
        for _ in range(12):
            w.add(rng.random((48, 56)))
    cfg = config(
        tmp_path,
        "objective=mae",
        "steps=2",
        f"data.sources=[{{kind: shards, path: {tmp_path / 'shards'}, weight: 3}}, {{kind: synthetic}}]",
    )
    pretrain(cfg)
    state = load_checkpoint(tmp_path / "run" / "checkpoints" / "last.pt")
    assert state["data"]["sources"][0]["name"].startswith("shards:")
    with pytest.raises(InputError, match=r"index\.json"):
        pretrain(config(tmp_path, "steps=1", f"data.sources=[{{kind: shards, path: {tmp_path}}}]", name="x"))
    with pytest.raises(ConfigError, match="empty"):
        pretrain(config(tmp_path, "steps=1", "data.sources=[]", name="y"))
    with pytest.raises(ConfigError, match="needs a path"):
        pretrain(config(tmp_path, "steps=1", "data.sources=[{kind: cache}]", name="z"))
    with pytest.raises(ConfigError, match="unknown config key"):
        config(tmp_path, "dino.nope=1")


def test_sigkill_then_resume_matches_uninterrupted_run(tmp_path):
    steps = 80
    common = [*TINY, "objective=mae", f"steps={steps}", "log_every=1000"]
    ref = build_config(PretrainConfig, overrides=[*common, f"out={tmp_path / 'ref'}", "ckpt_every=1000"])
    pretrain(ref)
    killed = tmp_path / "killed"
    args = [sys.executable, "-m", "cmrfm.cli", "pretrain", *common, f"out={killed}", "ckpt_every=10"]
    env = {**os.environ, "PYTHONUNBUFFERED": "1"}
    proc = subprocess.Popen(args, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    marker = killed / "checkpoints" / "step_00000020.pt"
    deadline = time.time() + 60
    while not marker.exists() and proc.poll() is None and time.time() < deadline:
        time.sleep(0.005)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    assert proc.returncode == -signal.SIGKILL, proc.stderr.read().decode()[-2000:]
    stopped_at = load_checkpoint(killed / "checkpoints" / "last.pt")["step"]
    assert 20 <= stopped_at < steps
    subprocess.run([*args, "--resume"], env=env, check=True, capture_output=True)
    a = load_checkpoint(tmp_path / "ref" / "checkpoints" / "last.pt")
    b = load_checkpoint(killed / "checkpoints" / "last.pt")
    assert b["step"] == steps
    assert states_equal(a["objective"], b["objective"])


@pytest.mark.parametrize("path", sorted(Path(__file__).parents[1].glob("configs/pretrain/*.yaml")))
def test_shipped_configs_parse(path):
    from cmrfm.pretrain.loop import model_config

    cfg = build_config(PretrainConfig, yaml_paths=[path])
    assert model_config(cfg).depth > 0 and (cfg.steps > 0 or cfg.time_limit_min > 0)


def test_cli_runs_with_overrides_and_exports(tmp_path, capsys):
    from cmrfm.cli import main

    out = tmp_path / "cli"
    argv = ["pretrain", *TINY, "objective=mae", "steps=2", f"out={out}"]
    assert main(argv) == 0
    assert "done: 2 steps" in capsys.readouterr().out
    assert main(["pretrain", "export", str(out), "--out", str(tmp_path / "w.safetensors"), "--fp16"]) == 0
    _, card = load_backbone(tmp_path / "w.safetensors")
    assert card["dtype"] == "float16" and card["objective"] == "mae"
    assert main(["pretrain", "nope.key=1"]) == 2
    assert "unknown config key" in capsys.readouterr().err
    assert main(["pretrain", "export", str(tmp_path / "none"), "--out", str(tmp_path / "x.safetensors")]) == 2


def test_simulator_source_is_deterministic_and_resumable():
    import numpy as np

    from cmrfm.pretrain.data import SimulatorSource

    fast = {
        "imaging": {"matrix": [48, 48], "supersample": 1, "depth_samples": 1, "n_coils": 1},
        "sequences": ["cine"],
        "views": ["sax"],
        "n_frames": 4,
    }
    a = SimulatorSource(seed=0, rank=0, items_per_subject=2, overrides=fast)
    images = [next(a) for _ in range(4)]  # two subjects
    assert images[0].shape == (48, 48) and images[0].dtype == np.float32
    assert 0.0 <= images[0].min() and images[0].max() <= 1.0
    b = SimulatorSource(seed=0, rank=0, items_per_subject=2, overrides=fast)
    b.load_state_dict(a.state_dict() | {"position": 2})
    assert np.array_equal(next(b), images[2]) and np.array_equal(next(b), images[3])
    other_rank = SimulatorSource(seed=0, rank=1, items_per_subject=2, overrides=fast)
    assert not np.array_equal(next(other_rank), images[0])


def test_time_budget_plans_the_schedule(tmp_path):
    cfg = config(tmp_path, "objective=mae", "steps=0", "time_limit_min=0.04", "calibration_steps=3")
    result = pretrain(cfg)
    state = load_checkpoint(tmp_path / "run" / "checkpoints" / "last.pt")
    assert state["planned"] and state["total_steps"] >= 4
    assert result.steps == state["step"] <= state["total_steps"]
    with pytest.raises(ConfigError, match="time_limit_min"):
        pretrain(config(tmp_path, "steps=0", name="nobudget"))


def test_knn_classify_votes_nearest_labels():
    from cmrfm.pretrain.probe import knn_classify

    train = torch.nn.functional.normalize(
        torch.tensor([[1.0, 0.0], [0.9, 0.1], [0.0, 1.0], [0.1, 0.9]]), dim=-1
    )
    labels = torch.tensor([0, 0, 1, 1])
    test = torch.nn.functional.normalize(torch.tensor([[1.0, 0.05], [0.05, 1.0]]), dim=-1)
    assert knn_classify(train, labels, test, num_classes=2, k=2).tolist() == [0, 1]


@pytest.mark.realdata
def test_cache_source_and_acdc_group_probe(acdc_root, tmp_path):
    from cmrfm.data.prepare import prepare_dataset
    from cmrfm.pretrain.config import ProbeConfig
    from cmrfm.pretrain.probe import cache_probe_set

    prepare_dataset(
        "acdc", acdc_root, tmp_path / "acdc", overrides=["max_studies=6", "size=64"], progress=False
    )
    probe = cache_probe_set(ProbeConfig(source="cache", path=str(tmp_path / "acdc"), label="group"), 32)
    assert probe.train_images.shape[1:] == (1, 32, 32) and len(probe.test_labels) > 0
    assert probe.classes and probe.name == "cache:group"
    cfg = config(
        tmp_path, "objective=mae", "steps=2", f"data.sources=[{{kind: cache, path: {tmp_path / 'acdc'}}}]"
    )
    assert pretrain(cfg).steps == 2


@pytest.mark.parametrize("objective", ["mae", "dino"])
def test_init_continues_from_exported_backbone(tmp_path, objective):
    """init= starts the student (and a DINO teacher) from exported weights; other files are refused."""
    from cmrfm.pretrain.loop import build_objective

    pretrain(config(tmp_path, "steps=2", "objective=mae", name="first"))
    weights, _ = export_run(tmp_path / "first", tmp_path / "first.safetensors")
    loaded, _ = load_backbone(weights)

    fresh = build_objective(config(tmp_path, f"objective={objective}", name="fresh"))
    cont = build_objective(config(tmp_path, f"objective={objective}", f"init={weights}", name="cont"))
    assert not states_equal(fresh.backbone.state_dict(), loaded.state_dict())
    assert states_equal(cont.backbone.state_dict(), loaded.state_dict())
    if objective == "dino":
        assert states_equal(cont.teacher_backbone.state_dict(), loaded.state_dict())
    # the objective's own parts start as in a fresh run of the same seed
    own = {k: v for k, v in fresh.state_dict().items() if "backbone." not in k}
    assert own and all(torch.equal(v, cont.state_dict()[k]) for k, v in own.items())

    cont_cfg = (f"objective={objective}", "steps=4", f"init={weights}")
    result = pretrain(config(tmp_path, *cont_cfg, "stop_at_step=2", name="cont"))
    assert result.steps == 2 and torch.isfinite(torch.tensor(result.last_loss))
    _, card = export_run(tmp_path / "cont", tmp_path / "cont.safetensors")
    assert card["training_config"]["init"] == str(weights)
    moved = weights.rename(tmp_path / "moved.safetensors")  # a resume needs the checkpoint, not the init
    assert pretrain(config(tmp_path, *cont_cfg, name="cont"), resume=True).steps == 4
    weights = moved.rename(weights)

    with pytest.raises(InputError, match="another architecture") as err:
        build_objective(config(tmp_path, "objective=mae", "model.embed_dim=96", f"init={weights}"))
    assert "first.safetensors" in str(err.value)
    with pytest.raises(InputError, match="not found"):
        build_objective(config(tmp_path, "objective=mae", f"init={tmp_path / 'missing.safetensors'}"))
