"""Few-shot label-efficiency sweeps: k labelled subjects × seeds × methods at one matched budget.

Methods: ``pretrained`` (ViT from the given backbone weights), ``scratch`` (the same ViT, random
init) and ``baseline`` (the task's conventional model). Every run is an ordinary fine-tuning run
in ``OUT/<method>/k<k>_s<seed>``, evaluated on the same held-out fold; a run whose ``metrics.json``
exists is reused, so an interrupted sweep resumes. The sweep writes ``OUT/fewshot.csv`` (one row
per run, with its budget) and ``OUT/fewshot.png`` (primary metric vs k, mean ± sd over seeds).
"""

from __future__ import annotations

import csv
import dataclasses
import json
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from cmrfm.engine.finetune import FinetuneConfig, finetune
from cmrfm.errors import ConfigError
from cmrfm.tasks import TASKS

METHODS = ("pretrained", "scratch", "baseline")


@dataclass
class FewshotConfig:
    """A sweep.

    Attributes:
        ks: Labelled subjects per run; ``0`` means all training subjects of the fold.
        seeds: Seeds per k (each draws its own subset and initialisation).
        methods: Which of ``pretrained``, ``scratch``, ``baseline`` to run.
        out: Sweep folder.
        base: The fine-tuning settings shared by every run (task, steps, batch, fold, ...).
        metric: The metric the curves show (any the task's evaluation reports, e.g. ``auroc``
            or ``balanced_accuracy`` for a binary task whose accuracy only counts the majority
            class at small k); empty = the task's primary metric. Every metric lands in the CSV.
        train_missing: Train the runs that have not finished; ``False`` only collects the
            finished ones (the CSV and plot of a stopped sweep, or of one split over processes).
    """

    ks: list[int] = field(default_factory=lambda: [1, 2, 5, 10, 20, 0])
    seeds: int = 3
    methods: list[str] = field(default_factory=lambda: list(METHODS))
    out: str = "runs/fewshot"
    base: FinetuneConfig = field(default_factory=FinetuneConfig)
    metric: str = ""
    train_missing: bool = True


def _run_config(cfg: FewshotConfig, method: str, k: int, seed: int) -> FinetuneConfig:
    out = Path(cfg.out) / method / f"k{k or 'all'}_s{seed}"
    run = dataclasses.replace(cfg.base, k_subjects=k, seed=seed, out=str(out), resume=True)
    if method == "pretrained":
        if not cfg.base.init:
            raise ConfigError("method 'pretrained' needs base.init=<backbone.safetensors>")
        return dataclasses.replace(run, model="vit")
    if method == "scratch":
        return dataclasses.replace(run, model="vit", init=None)
    if method == "baseline":
        return dataclasses.replace(run, model="baseline", init=None, mode="full")
    raise ConfigError(f"unknown method {method!r}; choose from {', '.join(METHODS)}")


def run_fewshot(cfg: FewshotConfig, progress: bool = True) -> list[dict[str, Any]]:
    """Runs (or reuses) every run of the sweep and writes the CSV and the plot."""
    if not cfg.base.task:
        raise ConfigError("no task given: set base.task=<id>")
    primary = cfg.metric or TASKS.get(cfg.base.task).info.metric
    rows: list[dict[str, Any]] = []
    # k outermost, methods innermost: a sweep stopped early still compares methods like for like
    for k in cfg.ks:
        for seed in range(cfg.seeds):
            for method in cfg.methods:
                run = _run_config(cfg, method, k, seed)
                metrics_path = Path(run.out) / "metrics.json"
                started = time.perf_counter()
                if not metrics_path.is_file():
                    if not cfg.train_missing:
                        continue
                    finetune(run, progress=progress)
                result = json.loads(metrics_path.read_text())
                if primary not in result["metrics"]:
                    raise ConfigError(
                        f"{metrics_path}: no metric {primary!r}; "
                        f"this task reports {', '.join(result['metrics'])}"
                    )
                rows.append(
                    {
                        "task": cfg.base.task,
                        "method": method,
                        "k": k or "all",
                        "seed": seed,
                        "metric": primary,
                        "value": result["metrics"].get(primary, float("nan")),
                        "steps": run.steps,
                        "batch_size": run.batch_size,
                        "image_size": run.image_size,
                        "fold": run.fold,
                        "seconds": round(_train_seconds(run.out, time.perf_counter() - started), 1),
                        **{f"m_{name}": v for name, v in result["metrics"].items()},
                    }
                )
                write_csv(rows, Path(cfg.out) / "fewshot.csv")
    if not rows:
        raise ConfigError(f"{cfg.out}: no finished runs to collect")
    plot_curves(rows, Path(cfg.out) / "fewshot.png", primary, cfg.base.task)
    return rows


def _train_seconds(run_out: str, fallback: float) -> float:
    """The run's training time from its model card (so a reused run keeps its cost), else ``fallback``."""
    card = Path(run_out) / "model.json"
    try:
        return float(json.loads(card.read_text())["train_seconds"])
    except (OSError, ValueError, KeyError, TypeError):
        return fallback


def write_csv(rows: list[dict[str, Any]], path: Path) -> None:
    """Writes the sweep rows (union of columns)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    keys = list(dict.fromkeys(k for row in rows for k in row))
    with path.open("w", newline="") as handle:
        writer = csv.DictWriter(handle, fieldnames=keys)
        writer.writeheader()
        writer.writerows(rows)


def summarise(rows: list[dict[str, Any]]) -> dict[str, dict[str, tuple[float, float, int]]]:
    """Mean, sd and count of the primary metric per method and k."""
    out: dict[str, dict[str, tuple[float, float, int]]] = {}
    for method in dict.fromkeys(r["method"] for r in rows):
        out[method] = {}
        for k in dict.fromkeys(r["k"] for r in rows):
            values = [r["value"] for r in rows if r["method"] == method and r["k"] == k]
            values = [v for v in values if np.isfinite(v)]
            if values:
                out[method][str(k)] = (float(np.mean(values)), float(np.std(values)), len(values))
    return out


def plot_curves(rows: list[dict[str, Any]], path: Path, metric: str, task: str) -> Path:
    """Label-efficiency plot: metric vs number of labelled subjects, one line per method."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    summary = summarise(rows)
    fig, ax = plt.subplots(figsize=(5.5, 3.8), dpi=120)
    ks = list(dict.fromkeys(str(r["k"]) for r in rows))
    positions = {k: i for i, k in enumerate(ks)}
    for method, by_k in summary.items():
        xs = [positions[k] for k in ks if k in by_k]
        means = np.array([by_k[k][0] for k in ks if k in by_k])
        sds = np.array([by_k[k][1] for k in ks if k in by_k])
        ax.plot(xs, means, marker="o", label=method)
        ax.fill_between(xs, means - sds, means + sds, alpha=0.2)
    ax.set_xticks(range(len(ks)), ks)
    ax.set_xlabel("labelled training subjects (k)")
    ax.set_ylabel(metric)
    ax.set_title(f"{task}: label efficiency")
    ax.grid(alpha=0.3)
    ax.legend()
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path)
    plt.close(fig)
    return path
