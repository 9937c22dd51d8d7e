"""``cmrfm pretrain export``: the backbone of a run as safetensors plus a JSON model card."""

from __future__ import annotations

import csv
from pathlib import Path
from typing import Any

from cmrfm import __version__
from cmrfm.engine.checkpoint import load_checkpoint
from cmrfm.errors import InputError
from cmrfm.models.factory import save_backbone
from cmrfm.models.vit import VisionTransformer, ViTConfig


def _run_checkpoint(run: str | Path) -> Path:
    run = Path(run)
    if run.is_file():
        return run
    path = run / "checkpoints" / "last.pt"
    if not path.is_file():
        raise InputError(run, "no checkpoints/last.pt in this run folder (has the run saved a checkpoint?)")
    return path


def _throughput(run_dir: Path) -> dict[str, float]:
    log = run_dir / "log.csv"
    if not log.is_file():
        return {}
    rows = list(csv.DictReader(log.open()))
    if not rows:
        return {}
    seconds = sum(float(r["seconds"]) for r in rows)
    ips = [float(r["images_per_s"]) for r in rows]
    return {"train_seconds_logged": seconds, "images_per_s_median": sorted(ips)[len(ips) // 2]}


def export_run(
    run: str | Path, out: str | Path, fp16: bool = False, which: str = "auto"
) -> tuple[Path, dict]:
    """Writes the run's backbone (DINO: teacher; MAE: encoder) and its model card.

    Args:
        run: Run folder (or a checkpoint file).
        out: Output ``.safetensors`` path (the card goes beside it as ``.json``).
        fp16: Store weights in float16 (half the size).
        which: ``auto``, ``teacher`` or ``student``.

    Returns:
        The weights path and the card.
    """
    ckpt_path = _run_checkpoint(run)
    state = load_checkpoint(ckpt_path)
    cfg = ViTConfig.from_dict(dict(state["architecture"]["config"]))
    objective = state["objective_name"]
    prefix = "teacher_backbone." if (objective == "dino" and which != "student") else "backbone."
    if which == "teacher" and objective != "dino":
        raise InputError(ckpt_path, f"a {objective} run has no teacher")
    weights = {k[len(prefix) :]: v for k, v in state["objective"].items() if k.startswith(prefix)}
    model = VisionTransformer(cfg)
    model.load_state_dict(weights)
    config = state["config"]
    steps = int(state["step"])
    world = len(state.get("per_rank") or [None])
    card: dict[str, Any] = {
        "objective": objective,
        "weights_from": prefix.rstrip("."),
        "steps": steps,
        "total_steps_planned": int(state.get("total_steps", config["steps"])),
        "images_seen": steps * config["batch_size"] * world,
        "batch_size_global": config["batch_size"] * world,
        "data": {"sources": config["data"]["sources"], "image_size": config["data"]["image_size"]},
        "probe": state.get("probes", {}),
        "input": "1 channel, per-image standardised (cmrfm.models.vit.standardize)",
        "training_config": config,
        "training": _throughput(ckpt_path.parent.parent),
        "exported_by": f"cmrfm {__version__}",
    }
    path = save_backbone(model, out, card=card, fp16=fp16)
    return path, card
