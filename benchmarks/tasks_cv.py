"""K-fold cross-validation of one task with the shared fine-tuning engine; a RESULTS.md section.

Each fold fine-tunes on the other folds' subjects (patient-level, stratified, seed recorded) and is
evaluated on its own; per-subject rows of all folds are pooled and summarised with bootstrap 95 %
intervals. Fold weights go to ``--out`` (never committed); the budget and wall time of every fold
are recorded beside the numbers.

    python benchmarks/tasks_cv.py --task sax-seg --init weights/cmrfm_vit_tiny_mae.safetensors \
        --steps 1500 --batch-size 16 [--model baseline] [key=value ...]

``--init`` may hold ``{fold}``: each fold then starts from its own model, e.g. the ``lge-seg`` fold
model that never saw that fold's held-out cases (``--init runs/cv/lge-seg/fold{fold}/model.safetensors``).
"""

from __future__ import annotations

import argparse
import csv
import dataclasses
import json
import os
import platform
import time
from datetime import UTC, datetime
from pathlib import Path

import numpy as np
from results import update_section

from cmrfm import metrics
from cmrfm.config import build_config
from cmrfm.engine.finetune import FinetuneConfig, finetune, write_csv
from cmrfm.tasks import TASKS

RESULTS = Path(__file__).resolve().parent / "RESULTS.md"


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--task", required=True)
    parser.add_argument("--folds", type=int, default=5)
    parser.add_argument("--only-folds", default="", help="comma-separated subset of folds to run")
    parser.add_argument("--init", default=None)
    parser.add_argument("--model", default="vit", choices=["vit", "baseline"])
    parser.add_argument("--steps", type=int, default=1000)
    parser.add_argument("--batch-size", type=int, default=16)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--out", default="")
    parser.add_argument("--no-write", action="store_true")
    parser.add_argument("--label", default="", help="name of this variant in the RESULTS.md heading")
    parser.add_argument("overrides", nargs="*", help="FinetuneConfig key=value overrides")
    args = parser.parse_args()

    default_label = "pretrained" if args.init else ("baseline" if args.model == "baseline" else "scratch")
    label = args.label or default_label
    out = Path(args.out or f"runs/cv/{args.task}/{label}")
    base = build_config(FinetuneConfig, [], args.overrides)
    base = dataclasses.replace(
        base,
        task=args.task,
        init=args.init,
        model=args.model,
        steps=args.steps,
        batch_size=args.batch_size,
        folds=args.folds,
        seed=args.seed,
        resume=True,
    )
    folds = [int(f) for f in args.only_folds.split(",") if f] or list(range(args.folds))
    rows, timings = [], []
    for fold in folds:
        init = args.init.format(fold=fold) if args.init else None
        run = dataclasses.replace(base, fold=fold, init=init, out=str(out / f"fold{fold}"))
        started = time.perf_counter()
        if not (Path(run.out) / "metrics.json").is_file():
            finetune(run)
            timings.append(time.perf_counter() - started)
        else:  # finished earlier: its card kept the training time
            card = json.loads((Path(run.out) / "model.json").read_text())
            timings.append(float(card.get("train_seconds") or float("nan")))
        per_subject = Path(run.out) / "per_subject.csv"
        with per_subject.open() as handle:
            for row in csv.DictReader(handle):
                rows.append({"fold": fold, **row})
    write_csv(out / "per_subject_all_folds.csv", rows)
    primary = TASKS.get(args.task).info.metric
    skip = {"subject", "volume", "fold", "label", "pred"}
    numeric = [
        k for k in rows[0] if k not in skip and not k.startswith(("p_", "ml_")) and _is_number(rows[0][k])
    ]
    summary = {}
    for key in numeric:
        values = np.array([float(r[key]) for r in rows], float)
        est, low, high = metrics.mean_ci(values)
        summary[key] = (est, low, high)
    if TASKS.get(args.task).info.kind == "classification":
        summary.update(_classification_summary(rows, len(TASKS.get(args.task).info.classes)))
    if "ml_pred_infarct" in rows[0]:
        summary.update(_lesion_summary(rows))
    (out / "cv_summary.json").write_text(json.dumps(summary, indent=2))
    cores = len(os.sched_getaffinity(0))
    shown_init = args.init if args.init and "{fold}" in args.init else Path(args.init or "").name
    init_arg = f" --init {shown_init}" if args.init else ""
    model_arg = " --model baseline" if args.model == "baseline" else ""
    command = (
        f"python benchmarks/tasks_cv.py --task {args.task} --steps {args.steps} "
        f"--batch-size {args.batch_size}{init_arg}{model_arg}" + "".join(f" {o}" for o in args.overrides)
    )
    lines = [
        f"Machine: {platform.processor() or platform.machine()}, {cores} cores; "
        f"date {datetime.now(UTC):%Y-%m-%d}; command `{command}`.",
        f"Budget per fold: {args.steps} steps × {args.batch_size} items; training wall time per fold "
        f"{np.nanmean(timings) / 60:.1f} min (folds {folds}; 2 shared cores, so ± load).",
        "",
        "| metric | mean | 95 % CI |",
        "|---|---|---|",
    ]
    for key, (est, low, high) in summary.items():
        lines.append(
            f"| {key}{' (primary)' if key == primary else ''} | {est:.4f} | [{low:.4f}, {high:.4f}] |"
        )
    body = "\n".join(lines)
    print(body)
    if not args.no_write:
        update_section(f"Task CV: {args.task} ({label})", body)


def _lesion_summary(rows: list[dict]) -> dict[str, tuple[float, float, float]]:
    """Infarct Dice over infarct cases only, and infarct presence read off the segmentation.

    Presence uses the rule study analysis applies without an ``lge-infarct`` head: predicted infarct
    ≥ ``MIN_INFARCT_ML`` (on EMIDEC's nominal spacing, which its PNGs lack).
    """
    from cmrfm.clinical.analyze import MIN_INFARCT_ML

    ref = np.array([float(r["ml_ref_infarct"]) > 0 for r in rows])
    pred_ml = np.array([float(r["ml_pred_infarct"]) for r in rows])
    out: dict[str, tuple[float, float, float]] = {}
    lesion = np.array([float(r["dice_infarct"]) for r in rows])[ref]
    if lesion.size:
        out["dice_infarct (infarct cases)"] = metrics.mean_ci(lesion)
    if "dice_scar" in rows[0] and ref.any():  # infarct with its MVO core, as infarct size is reported
        out["dice_scar = infarct + MVO (infarct cases)"] = metrics.mean_ci(
            np.array([float(r["dice_scar"]) for r in rows])[ref]
        )
    y, yhat = ref.astype(int), (pred_ml >= MIN_INFARCT_ML).astype(int)
    out[f"infarct present accuracy (seg ≥ {MIN_INFARCT_ML} mL)"] = metrics.bootstrap_ci(
        lambda idx: metrics.accuracy(y[idx], yhat[idx]), len(y)
    )
    if 0 < y.sum() < len(y):
        out["infarct present AUROC (predicted mL)"] = metrics.bootstrap_ci(
            lambda idx: metrics.auroc(y[idx], pred_ml[idx]), len(y)
        )
    return out


def _is_number(value: str) -> bool:
    try:
        float(value)
    except (TypeError, ValueError):
        return False
    return True


def _classification_summary(rows: list[dict], num_classes: int) -> dict[str, tuple[float, float, float]]:
    y = np.array([int(r["label"]) for r in rows])
    pred = np.array([int(r["pred"]) for r in rows])
    out = {}
    for name, fn in (
        ("accuracy", lambda idx: metrics.accuracy(y[idx], pred[idx])),
        ("balanced_accuracy", lambda idx: metrics.balanced_accuracy(y[idx], pred[idx], num_classes)),
    ):
        out[name] = metrics.bootstrap_ci(fn, len(y))
    return out


if __name__ == "__main__":
    main()
