"""``cmrfm tasks | finetune | evaluate | fewshot``: the clinical tasks, their training and evaluation."""

from __future__ import annotations

import json
from pathlib import Path

import typer

from cmrfm.errors import ConfigError

_KV_HELP = "Overrides as key=value (e.g. steps=500 optim.lr=1e-4 task_options.root=DIR)."


def list_tasks(
    task: str = typer.Argument(
        None, help="Show every setting of this task (task_options.* and the fine-tuning keys)."
    ),
) -> None:
    """List the registered clinical tasks, or every setting of one task with its default."""
    from rich.table import Table

    from cmrfm.cli.display import console
    from cmrfm.tasks import TASKS

    if task:
        _show_task_settings(TASKS.get(task))
        return
    table = Table(title="cmrfm tasks", title_justify="left")
    for column in ("id", "kind", "level", "data", "metric", "classes"):
        table.add_column(column)
    for task_id in TASKS.names():
        info = TASKS.get(task_id).info
        table.add_row(info.id, info.kind, info.level, info.data, info.metric, ", ".join(info.classes))
    console().print(table)
    console().print("`cmrfm tasks ID` lists every setting of one task.")


def _show_task_settings(task_cls) -> None:
    """Two tables: the task's ``task_options.*`` and the fine-tuning run's own keys."""
    from rich.table import Table

    from cmrfm.cli.display import console
    from cmrfm.config import describe_fields
    from cmrfm.engine.finetune import FinetuneConfig

    info = task_cls.info
    sections = (
        (f"{info.id}: {info.title} (task_options.*)", describe_fields(task_cls.config_cls, "task_options.")),
        (
            "fine-tuning run (any task)",
            [r for r in describe_fields(FinetuneConfig) if r[0] != "task_options"],
        ),
    )
    for title, rows in sections:
        table = Table(title=title, title_justify="left", show_lines=False)
        table.add_column("key", no_wrap=True)
        table.add_column("default", overflow="fold")
        table.add_column("meaning", overflow="fold")
        for key, default, meaning in rows:
            table.add_row(key, repr(default), meaning.replace("``", "`"))
        console().print(table)
    console().print("Set any of them as key=value on `cmrfm finetune`, `evaluate` or `fewshot`.")


def _finetune_config(
    task: str, init: Path | None, mode: str | None, config: list[Path], overrides: list[str]
):
    from cmrfm.config import build_config
    from cmrfm.engine.finetune import FinetuneConfig

    cfg = build_config(FinetuneConfig, yaml_paths=config or [], overrides=overrides or [])
    updates = {"task": task}
    if init is not None:
        updates["init"] = str(init)
    if mode is not None:
        updates["mode"] = mode
    import dataclasses

    return dataclasses.replace(cfg, **updates)


def finetune(
    task: str = typer.Option(..., "--task", "-t", help="Task id (see `cmrfm tasks`)."),
    init: Path = typer.Option(
        None,
        "--init",
        help="Pretrained backbone .safetensors, or another task's model to start from (default: scratch).",
    ),
    mode: str = typer.Option(None, "--mode", help="full | frozen | linear."),
    config: list[Path] = typer.Option(None, "--config", "-c", help="YAML config(s), merged in order."),
    overrides: list[str] = typer.Argument(None, help=_KV_HELP),
) -> None:
    """Fine-tune a backbone (or train a baseline with model=baseline) on one task and evaluate it."""
    from cmrfm.engine.finetune import finetune as run

    cfg = _finetune_config(task, init, mode, config, overrides)
    result = run(cfg)
    _print_metrics(result.eval.metrics if result.eval else {}, result.eval.intervals if result.eval else {})
    typer.echo(f"weights: {result.weights} ({result.steps} steps, {result.seconds:.0f} s)")


def evaluate(
    task: str = typer.Option(..., "--task", "-t", help="Task id."),
    weights: Path = typer.Option(
        ..., "--weights", "-w", help="A task model .safetensors from `cmrfm finetune`."
    ),
    data: Path = typer.Option(
        None, "--data", help="Dataset root or prepared cache (default: the task's data)."
    ),
    fold: int = typer.Option(-1, "--fold", help="Evaluate only this held-out fold (-1: every subject)."),
    folds: int = typer.Option(5, "--folds", help="Number of folds for --fold."),
    seed: int = typer.Option(0, "--seed", help="Split seed for --fold."),
    out: Path = typer.Option(None, "--out", help="Folder for metrics.json and per_subject.csv."),
    tta: bool = typer.Option(
        False, "--tta", help="Segmentation: average the image's and its flips' probabilities (4 passes)."
    ),
) -> None:
    """Evaluate task weights on labelled data: a metric table, plus JSON/CSV when --out is given."""
    from cmrfm.engine.finetune import FinetuneConfig, load_task_model, split_subjects, write_csv

    model, card = load_task_model(weights)
    if card["task"] != task:
        raise ConfigError(f"{weights} holds a {card['task']!r} model, not {task!r}")
    if tta:
        if not hasattr(model.task.config, "test_time_flips"):
            raise ConfigError(f"--tta applies to segmentation tasks; {task} is a {model.task.info.kind} task")
        model.task.config.test_time_flips = True
    if data is not None:
        key = "cache" if (data / "cache.json").is_file() else "root"
        setattr(model.task.config, key, str(data))
    corpus = model.task.load_data()
    if fold >= 0:
        _, subjects = split_subjects(corpus, FinetuneConfig(task=task, fold=fold, folds=folds, seed=seed))
    else:
        subjects = corpus.subjects
    result = model.task.evaluate(model, corpus.make_dataset(subjects, False))
    _print_metrics(result.metrics, result.intervals)
    if out is not None:
        out.mkdir(parents=True, exist_ok=True)
        payload = {
            "task": task,
            "weights": str(weights),
            "subjects": len(subjects),
            "tta": tta,
            "metrics": result.metrics,
        }
        payload["intervals"] = result.intervals
        (out / "metrics.json").write_text(json.dumps(payload, indent=2))
        write_csv(out / "per_subject.csv", result.per_subject)
        typer.echo(f"wrote {out / 'metrics.json'} and {out / 'per_subject.csv'}")


def fewshot(
    task: str = typer.Option(..., "--task", "-t", help="Task id."),
    k: str = typer.Option(
        "1,2,5,10,20,all", "--k", help="Labelled subjects per run, comma-separated (all = every)."
    ),
    seeds: int = typer.Option(3, "--seeds", help="Seeds per k."),
    init: Path = typer.Option(None, "--init", help="Pretrained backbone for the 'pretrained' method."),
    methods: str = typer.Option("pretrained,scratch,baseline", "--methods", help="Comma-separated methods."),
    out: Path = typer.Option(Path("runs/fewshot"), "--out", help="Sweep folder (finished runs are reused)."),
    metric: str = typer.Option(
        "", "--metric", help="Metric of the curves (default: the task's primary; e.g. auroc)."
    ),
    collect_only: bool = typer.Option(
        False, "--collect-only", help="Train nothing: tabulate and plot the finished runs of --out."
    ),
    via: Path = typer.Option(
        None,
        "--via",
        help="A finished segmentation sweep (same --k, --seeds, fold): each run works from the "
        "segmentation run of its method, k and seed (disease-cls: features of its masks; "
        "lge-infarct: its scar). --init is then not needed.",
    ),
    start: list[str] = typer.Option(
        None,
        "--start",
        help="METHOD=WEIGHTS: that method (pretrained or scratch) starts from these weights instead "
        "of its default, e.g. a sax-seg model trained from the backbone / from scratch "
        "({seed} = the run's seed). Repeatable.",
    ),
    overrides: list[str] = typer.Argument(None, help=_KV_HELP + " Applied to every run."),
) -> None:
    """Label-efficiency sweep: pretrained vs scratch vs baseline over k labelled subjects and seeds."""
    from cmrfm.engine.fewshot import FewshotConfig, run_fewshot, summarise

    ks = [0 if v.strip() == "all" else int(v) for v in k.split(",") if v.strip()]
    chosen = [m.strip() for m in methods.split(",") if m.strip()]
    inits: dict[str, str] = {}
    for item in start or []:
        method, sep, weights = item.partition("=")
        if not sep or not weights:
            raise typer.BadParameter(f"{item!r}: expected METHOD=WEIGHTS", param_hint="--start")
        inits[method.strip()] = weights.strip()
    if init is None and "pretrained" in chosen and via is None and "pretrained" not in inits:
        chosen.remove("pretrained")
        typer.echo("no --init given: skipping the 'pretrained' method")
    base = _finetune_config(task, init, None, [], overrides)
    rows = run_fewshot(
        FewshotConfig(
            ks=ks,
            seeds=seeds,
            methods=chosen,
            out=str(out),
            base=base,
            metric=metric,
            train_missing=not collect_only,
            via=str(via) if via else "",
            inits=inits,
        )
    )
    for method, by_k in summarise(rows).items():
        cells = ", ".join(f"k={kk}: {m:.3f}±{s:.3f}" for kk, (m, s, _) in by_k.items())
        typer.echo(f"{method}: {cells}")
    typer.echo(f"wrote {out / 'fewshot.csv'} and {out / 'fewshot.png'}")


def _print_metrics(metrics: dict[str, float], intervals: dict[str, tuple[float, float]]) -> None:
    from rich.table import Table

    from cmrfm.cli.display import console

    table = Table(title="metrics", title_justify="left")
    table.add_column("metric")
    table.add_column("value")
    table.add_column("95% CI")
    for name, value in metrics.items():
        ci = intervals.get(name)
        table.add_row(name, f"{value:.4f}", "" if ci is None else f"[{ci[0]:.4f}, {ci[1]:.4f}]")
    console().print(table)


def register(app: typer.Typer) -> None:
    """Adds ``tasks``, ``finetune``, ``evaluate`` and ``fewshot`` to the root app."""
    app.command("tasks")(list_tasks)
    app.command("finetune")(finetune)
    app.command("evaluate")(evaluate)
    app.command("fewshot")(fewshot)
