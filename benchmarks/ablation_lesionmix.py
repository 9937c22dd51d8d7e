"""LesionMix ablation: fine-tune ``lge-seg`` on EMIDEC folds with and without LesionMix, same budget.

For each requested fold (case-level, stratified normal/infarct, seed recorded) the script runs two
fine-tunings that differ only in ``task_options.lesionmix`` (0 vs ``--lesionmix``): same backbone
(``--init`` weights or from scratch), steps, batch, seed, split and augmentation. It reports the
held-out infarct Dice (and MVO Dice, mean Dice) per fold and their means, and replaces the
"LesionMix ablation" section of ``benchmarks/RESULTS.md`` with the table, budget, date and command.

Runs are restartable: a fold/arm whose ``metrics.json`` already exists under ``--out`` is read back,
not retrained. Example (the budget the lead runs)::

    .venv/bin/python benchmarks/ablation_lesionmix.py --steps 1500 --batch-size 16 \\
        --init weights/backbone.safetensors --folds 5 --run-folds 0,1,2,3,4

and a smoke run that only proves the pipeline: ``--steps 2 --batch-size 2 --run-folds 0``.
"""

from __future__ import annotations

import argparse
import csv
import json
import os
import platform
import shlex
import statistics
import sys
import time
from datetime import UTC, datetime
from pathlib import Path

from results import replace_section

from cmrfm.config import merge_into, parse_overrides
from cmrfm.engine.finetune import FinetuneConfig, finetune

HEADING = "## LesionMix ablation on EMIDEC (benchmarks/ablation_lesionmix.py)"
METRICS = ("dice_infarct_cases", "dice_infarct", "dice_MVO", "dice_mean")


def infarct_case_dice(per_subject: Path) -> float:
    """Mean infarct Dice over the held-out cases whose manual mask holds infarct (NaN if none)."""
    if not per_subject.is_file():
        return float("nan")
    with per_subject.open(newline="") as handle:
        rows = [r for r in csv.DictReader(handle) if float(r.get("ml_ref_infarct") or 0) > 0]
    values = [float(r["dice_infarct"]) for r in rows if r["dice_infarct"] not in ("", "nan")]
    return statistics.fmean(values) if values else float("nan")


def run_arm(args: argparse.Namespace, fold: int, lesionmix: float) -> dict[str, float]:
    """One fine-tuning (or its saved metrics) and its held-out metrics plus wall time."""
    out = Path(args.out) / f"lesionmix{lesionmix:g}" / f"fold{fold}"
    return {
        **_arm_metrics(args, fold, lesionmix, out),
        "dice_infarct_cases": infarct_case_dice(out / "per_subject.csv"),
    }


def _arm_metrics(args: argparse.Namespace, fold: int, lesionmix: float, out: Path) -> dict[str, float]:
    saved = out / "metrics.json"
    if saved.is_file():
        data = json.loads(saved.read_text())
        seconds = data.get("seconds")
        card = out / "model.json"
        if seconds is None and card.is_file():  # a run made by `cmrfm finetune` itself
            seconds = json.loads(card.read_text()).get("train_seconds")
        return {**data["metrics"], "seconds": float(seconds if seconds is not None else "nan")}
    cfg = FinetuneConfig(
        task="lge-seg",
        model=args.model,
        init=args.init,
        preset=args.preset,
        image_size=args.image_size,
        mode=args.mode,
        steps=args.steps,
        batch_size=args.batch_size,
        folds=args.folds,
        fold=fold,
        seed=args.seed,
        out=str(out),
        ckpt_every=max(args.steps // 4, 1),
        task_options={"lesionmix": lesionmix},
    )
    # shared overrides first, then the arm's own LesionMix probability, which always wins
    cfg = merge_into(cfg, parse_overrides(args.set))
    cfg = merge_into(cfg, {"task_options": {"lesionmix": lesionmix}})
    start = time.perf_counter()
    result = finetune(cfg, progress=not args.quiet)
    seconds = time.perf_counter() - start
    data = json.loads(saved.read_text())
    data["seconds"] = seconds
    saved.write_text(json.dumps(data, indent=2))
    assert result.eval is not None
    return {**result.eval.metrics, "seconds": seconds}


def _fmt(value: float) -> str:
    return "n/a" if value != value else f"{value:.3f}"  # NaN check


def _mean(rows: list[dict[str, float]], key: str) -> tuple[float, float]:
    values = [r[key] for r in rows if key in r and r[key] == r[key]]
    if not values:
        return float("nan"), float("nan")
    return statistics.fmean(values), statistics.stdev(values) if len(values) > 1 else 0.0


def table(args: argparse.Namespace, folds: list[int], base: list[dict], mixed: list[dict]) -> str:
    """Markdown section: per-fold and mean metrics of both arms, with budget and provenance."""
    lines = [
        HEADING,
        "",
        f"Date {datetime.now(UTC).strftime('%Y-%m-%d %H:%M UTC')}; {platform.machine()}, "
        f"{os.cpu_count()} CPUs, no GPU (minutes are wall time on a machine that may be shared).",
        f"Command: `{' '.join(shlex.quote(a) for a in [Path(sys.argv[0]).name, *sys.argv[1:]])}`",
        "",
        f"Budget per run: model {args.model}, init {Path(args.init).name if args.init else 'scratch'} "
        f"(preset {args.preset}), mode {args.mode}, {args.steps} steps × batch {args.batch_size} at "
        f"{args.image_size} px, seed {args.seed}; {args.folds}-fold case-level split of EMIDEC "
        f"(stratified normal/infarct), folds run: {','.join(map(str, folds))}. LesionMix probability "
        f"{args.lesionmix:g} vs 0; everything else identical"
        + (f" (shared overrides: {', '.join(f'`{o}`' for o in args.set)})." if args.set else "."),
        "",
        "| fold | infarct Dice on infarct cases, no LesionMix | …, LesionMix | infarct Dice all cases, no "
        "| …, LesionMix | MVO Dice, no | MVO Dice, LesionMix | mean Dice, no | mean Dice, LesionMix "
        "| minutes (no / LM) |",
        "|---|---|---|---|---|---|---|---|---|---|",
    ]
    nan = float("nan")
    for fold, a, b in zip(folds, base, mixed, strict=True):
        pairs = " | ".join(f"{_fmt(a.get(k, nan))} | {_fmt(b.get(k, nan))}" for k in METRICS)
        lines.append(f"| {fold} | {pairs} | {a['seconds'] / 60:.1f} / {b['seconds'] / 60:.1f} |")
    cells = []
    for key in METRICS:
        for rows in (base, mixed):
            mean, std = _mean(rows, key)
            cells.append(f"{_fmt(mean)} ± {_fmt(std)}")
    lines.append(f"| mean ± sd | {' | '.join(cells)} | |")
    smoke = args.steps < 100
    lines += [
        "",
        "Smoke-run budget: these numbers only prove the pipeline runs; they say nothing about LesionMix."
        if smoke
        else "Dice per case volume (EMIDEC has no pixel spacing: distances are per prepared pixel), "
        "averaged over held-out cases; ± is the spread over folds.",
    ]
    return "\n".join(lines) + "\n"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=1500)
    parser.add_argument("--batch-size", type=int, default=16)
    parser.add_argument("--image-size", type=int, default=128)
    parser.add_argument("--init", default=None, help="pretrained backbone (.safetensors); scratch if absent")
    parser.add_argument("--preset", default="tiny", help="backbone preset when training from scratch")
    parser.add_argument("--model", default="vit", choices=("vit", "baseline"))
    parser.add_argument("--mode", default="full", choices=("full", "frozen", "linear"))
    parser.add_argument(
        "--lesionmix", type=float, default=0.5, help="LesionMix probability of the second arm"
    )
    parser.add_argument(
        "--set",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="further finetune overrides shared by both arms (e.g. task_options.lesion_oversample=2)",
    )
    parser.add_argument("--folds", type=int, default=5)
    parser.add_argument("--run-folds", default="0,1,2,3,4", help="comma-separated folds to run")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--out", default="runs/ablation_lesionmix")
    parser.add_argument("--quiet", action="store_true", help="no progress bars")
    parser.add_argument("--no-write", action="store_true", help="print only; leave RESULTS.md alone")
    args = parser.parse_args()
    folds = [int(f) for f in args.run_folds.split(",") if f.strip()]
    base, mixed = [], []
    for fold in folds:
        base.append(run_arm(args, fold, 0.0))
        mixed.append(run_arm(args, fold, args.lesionmix))
        print(
            f"fold {fold}: infarct Dice {_fmt(base[-1].get('dice_infarct', float('nan')))} without, "
            f"{_fmt(mixed[-1].get('dice_infarct', float('nan')))} with LesionMix",
            flush=True,
        )
    section = table(args, folds, base, mixed)
    print(section)
    if not args.no_write:
        replace_section(HEADING, section)


if __name__ == "__main__":
    main()
