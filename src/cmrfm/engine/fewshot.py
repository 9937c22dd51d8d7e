"""Few-shot label-efficiency sweeps: k labelled subjects × seeds × methods at one matched budget.

Methods: ``pretrained`` (ViT from the given backbone weights), ``scratch`` (the same ViT, random
init) and ``baseline`` (the task's conventional model). Every run is an ordinary fine-tuning run
in ``OUT/<method>/k<k>_s<seed>``, evaluated on the same held-out fold; a run whose ``metrics.json``
exists is reused, so an interrupted sweep resumes. The sweep writes ``OUT/fewshot.csv`` (one row
per run, with its budget) and ``OUT/fewshot.png`` (primary metric vs k, mean ± sd over seeds).

With ``via`` (a finished sweep of a segmentation task over the same k, seeds and fold), each run
works from the segmentation run of its method, k and seed: the product's route for tasks whose
head decides from drawn masks (``disease-cls`` from the shape and function of the predicted ED/ES
masks, ``lge-infarct`` from the scar the ``lge-seg`` decoder draws). The method then names the
segmentation model the labelled subjects trained; both runs use the same k subjects (checked).

With ``inits`` a method starts from other weights than its default: e.g. ``pretrained`` from a
``sax-seg`` model fine-tuned from the backbone and ``scratch`` from one trained on the same cine
labels from random weights, for the product's route to a task with few labels of its own (an
``lge-seg`` that starts from the cine segmentation). The method's name then still says whether
self-supervised pretraining is in the chain: a ``scratch`` start must itself have been trained
from scratch, a ``pretrained`` one must not (checked on their model cards).
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

from cmrfm.config import build_config
from cmrfm.engine.checkpoint import load_card
from cmrfm.engine.finetune import TASK_MODEL_FORMAT, FinetuneConfig, build_task, finetune, split_subjects
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
        via: A finished segmentation sweep folder (``<via>/<method>/k<k>_s<seed>/model.safetensors``)
            whose runs this sweep's runs work from (see the module docstring); empty = none.
        inits: Start weights per method (``pretrained`` or ``scratch``) in place of the default
            (``base.init``, random): a task model (``{seed}`` in the path = the run's seed, so
            each seed starts from its own model) or a backbone; see the module docstring.
    """

    ks: list[int] = field(default_factory=lambda: [1, 2, 5, 10, 20, 0])
    seeds: int = 3
    methods: list[str] = field(default_factory=lambda: list(METHODS))
    out: str = "runs/fewshot"
    base: FinetuneConfig = field(default_factory=FinetuneConfig)
    metric: str = ""
    train_missing: bool = True
    via: str = ""
    inits: dict[str, str] = field(default_factory=dict)


def _run_name(k: int, seed: int) -> str:
    return f"k{k or 'all'}_s{seed}"


def _run_config(cfg: FewshotConfig, method: str, k: int, seed: int) -> FinetuneConfig:
    out = Path(cfg.out) / method / _run_name(k, seed)
    run = dataclasses.replace(cfg.base, k_subjects=k, seed=seed, out=str(out), resume=True)
    if method not in METHODS:
        raise ConfigError(f"unknown method {method!r}; choose from {', '.join(METHODS)}")
    if cfg.via:
        return _via_config(cfg, run, method)
    if method in cfg.inits:
        return dataclasses.replace(run, model="vit", init=_method_init(cfg, method, seed))
    if method == "pretrained":
        if not cfg.base.init:
            raise ConfigError("method 'pretrained' needs base.init=<backbone.safetensors>")
        return dataclasses.replace(run, model="vit")
    if method == "scratch":
        return dataclasses.replace(run, model="vit", init=None)
    return dataclasses.replace(run, model="baseline", init=None, mode="full")


def _method_init(cfg: FewshotConfig, method: str, seed: int) -> str:
    """The start weights ``cfg.inits`` gives ``method`` for ``seed``, checked against its name.

    Raises:
        ConfigError: The method cannot take other weights (``baseline``), the file is missing, or
            its card contradicts the method (a ``scratch`` start fine-tuned from a backbone).
    """
    if method == "baseline":
        raise ConfigError("inits: the baseline trains from scratch; starts are for pretrained or scratch")
    path = Path(cfg.inits[method].replace("{seed}", str(seed)))
    if not path.is_file():
        raise ConfigError(f"inits.{method}: {path} does not exist")
    card = load_card(path)
    started = (
        _chain_origin(str(card.get("init", ""))) if card.get("format") == TASK_MODEL_FORMAT else "backbone"
    )
    if (method == "scratch") != (started == "scratch"):
        raise ConfigError(
            f"inits.{method}: {path} was trained from {started or 'an unknown start'!r}; a {method} start "
            f"must {'' if method == 'scratch' else 'not '}come from random weights"
        )
    return str(path)


def _chain_origin(init: str) -> str:
    """Where a task model's chain of starts began: ``"lge-seg (sax-seg (scratch))"`` -> ``"scratch"``.

    A task model started from another one records ``"<task> (<that model's init>)"``, so the
    innermost name is the first start: random weights (``scratch``) or a backbone's objective.
    """
    return init.rstrip(")").rpartition("(")[2].strip()


def _via_run(cfg: FewshotConfig, method: str, k: int, seed: int) -> tuple[Path, dict[str, Any]]:
    """The segmentation model of ``via`` for this method, k and seed, and its card.

    Raises:
        ConfigError: That run has not finished.
    """
    weights = Path(cfg.via) / method / _run_name(k, seed) / "model.safetensors"
    if not weights.is_file():
        raise ConfigError(
            f"{weights.parent}: no finished segmentation run for method {method}, "
            f"k={k or 'all'}, seed {seed}; run that sweep first "
            f"(cmrfm fewshot --out {cfg.via} with the same --k, --seeds and fold)"
        )
    return weights, load_card(weights)


def _via_config(cfg: FewshotConfig, run: FinetuneConfig, method: str) -> FinetuneConfig:
    """``run`` linked to its segmentation run: the task's :meth:`~cmrfm.tasks.base.Task.segmentation_link`."""
    weights, card = _via_run(cfg, method, run.k_subjects, run.seed)
    if card.get("fold") != run.fold or card.get("seed") != run.seed:
        raise ConfigError(
            f"{weights}: trained on fold {card.get('fold')}, seed {card.get('seed')}; this run is "
            f"fold {run.fold}, seed {run.seed}"
        )
    link = build_task(run.task, run.task_options).segmentation_link(str(weights), card)
    return dataclasses.replace(
        run,
        model="vit",
        init=link.get("init"),
        task_options={**run.task_options, **link.get("task_options", {})},
    )


def check_same_subjects(cfg: FewshotConfig, seg_task: str) -> None:
    """Raises ConfigError unless ``seg_task`` and the sweep's task draw the same k subjects per seed.

    A linked run must train its head on the subjects whose labels trained the segmentation.
    """
    tasks = build_task(seg_task), build_task(cfg.base.task)
    seg_data, own_data = (t.synthetic_data() if cfg.base.synthetic else t.load_data() for t in tasks)
    for k in cfg.ks:
        for seed in range(cfg.seeds):
            run = dataclasses.replace(cfg.base, k_subjects=k, seed=seed)
            seg_split = split_subjects(seg_data, dataclasses.replace(run, task=seg_task))
            if seg_split != split_subjects(own_data, run):
                raise ConfigError(
                    f"{seg_task} and {cfg.base.task} draw different subjects at k={k or 'all'}, seed {seed}: "
                    f"--via needs both tasks on the same subjects and strata"
                )


def run_fewshot(cfg: FewshotConfig, progress: bool = True) -> list[dict[str, Any]]:
    """Runs (or reuses) every run of the sweep and writes the CSV and the plot."""
    if not cfg.base.task:
        raise ConfigError("no task given: set base.task=<id>")
    if cfg.inits and cfg.via:
        raise ConfigError("inits and via both set the start of each run: give one of them")
    if unused := sorted(set(cfg.inits) - set(cfg.methods)):
        raise ConfigError(
            f"inits for {', '.join(unused)}: not among this sweep's methods ({', '.join(cfg.methods)})"
        )
    primary = cfg.metric or TASKS.get(cfg.base.task).info.metric
    if cfg.via and cfg.train_missing:
        _run_config(cfg, cfg.methods[0], cfg.ks[0], 0)  # raises unless the task works from this model
        check_same_subjects(cfg, str(_via_run(cfg, cfg.methods[0], cfg.ks[0], 0)[1].get("task")))
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
                card = _run_card(run.out)
                saved = _saved_run(run)
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
                        "steps": _card_value(card, "steps", run.steps),
                        "batch_size": saved.batch_size,
                        "image_size": saved.image_size,
                        "fold": saved.fold,
                        "eval_unused": saved.eval_unused,
                        "eval_subjects": _card_value(card, "eval_subjects", float("nan")),
                        "init": run.init or "",
                        "seconds": round(
                            _card_value(card, "train_seconds", time.perf_counter() - started), 1
                        ),
                        **_via_columns(cfg, method, k, seed),
                        **{f"m_{name}": v for name, v in result["metrics"].items()},
                    }
                )
                write_csv(rows, Path(cfg.out) / "fewshot.csv")
    if not rows:
        raise ConfigError(f"{cfg.out}: no finished runs to collect")
    plot_curves(rows, Path(cfg.out) / "fewshot.png", primary, cfg.base.task)
    return rows


def _via_columns(cfg: FewshotConfig, method: str, k: int, seed: int) -> dict[str, Any]:
    """The linked segmentation run's folder and budget (none without ``via``)."""
    if not cfg.via:
        return {}
    weights, card = _via_run(cfg, method, k, seed)
    seg_run = weights.parent
    return {
        "via_run": str(seg_run),
        "via_steps": card.get("steps"),
        "via_seconds": _card_value(card, "train_seconds", float("nan")),
    }


def _run_card(run_out: str) -> dict[str, Any]:
    """A run's model card (``model.json``), or an empty one when it has none readable."""
    try:
        card = json.loads((Path(run_out) / "model.json").read_text())
    except (OSError, ValueError):
        return {}
    return card if isinstance(card, dict) else {}


def _saved_run(run: FinetuneConfig) -> FinetuneConfig:
    """The config a finished run was trained and evaluated with (its ``config.yaml``), else ``run``.

    A row describes its run, not the collecting command: a sweep collected with other keys
    (``--collect-only`` without ``eval_unused=true``, or a ``k = all`` run that cannot take it)
    still reports each run's own budget and evaluation set.
    """
    saved = Path(run.out) / "config.yaml"
    return build_config(FinetuneConfig, [saved]) if saved.is_file() else run


def _card_value(card: dict[str, Any], key: str, fallback: float) -> float:
    """A number from a model card, else ``fallback``.

    A reused run thus keeps its training time, and ``steps`` is what a run took (0 for a head
    fitted exactly rather than by gradient steps).
    """
    value = card.get(key)
    return value if isinstance(value, int | float) else fallback


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
