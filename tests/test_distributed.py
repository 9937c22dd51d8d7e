import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from cmrfm.engine.checkpoint import load_checkpoint

TINY = [
    "model.depth=2",
    "model.embed_dim=48",
    "model.num_heads=3",
    "model.img_size=32",
    "data.image_size=40",
    "batch_size=4",
    "dino.crops.global_size=32",
    "dino.crops.local_size=16",
    "dino.crops.n_local=2",
    "dino.out_dim=64",
    "dino.hidden_dim=32",
    "dino.bottleneck_dim=16",
    "dino.ibot=true",
    "threads=1",
    "log_every=2",
]


def torchrun(tmp_path: Path, *args: str) -> subprocess.CompletedProcess:
    cmd = [
        sys.executable,
        "-m",
        "torch.distributed.run",
        "--standalone",
        "--nproc_per_node=2",
        "-m",
        "cmrfm.cli",
        "pretrain",
        *TINY,
        *args,
    ]
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    return subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=120, cwd=tmp_path)


@pytest.mark.slow
def test_two_process_ddp_on_cpu_keeps_replicas_identical_and_resumes(tmp_path):
    run = tmp_path / "ddp"
    proc = torchrun(tmp_path, f"out={run}", "steps=4", "ckpt_every=2", "stop_at_step=2")
    assert proc.returncode == 0, proc.stderr[-3000:]
    proc = torchrun(tmp_path, f"out={run}", "steps=4", "ckpt_every=2", "--resume")
    assert proc.returncode == 0, proc.stderr[-3000:]
    sums = json.loads((run / "replicas.json").read_text())["param_sums"]
    assert len(sums) == 2 and sums[0] == sums[1]
    state = load_checkpoint(run / "checkpoints" / "last.pt")
    assert state["step"] == 4 and len(state["per_rank"]) == 2
    positions = [r["data"]["sources"][0]["state"]["position"] for r in state["per_rank"]]
    assert positions == [16, 16]  # each rank streamed its own 4 steps × 4 images
    assert state["config"]["batch_size"] == 4
