"""Infarct presence read off the scar of few-shot ``lge-seg`` runs (no classifier trained).

Study analysis without an ``lge-infarct`` head calls an infarct present when the segmentation
draws at least ``MIN_INFARCT_ML`` of it. This script applies that rule to every run of a finished
``lge-seg`` few-shot sweep (``cmrfm fewshot --task lge-seg``), on every case the run did not train
on (the held-out fold plus the rest of its training part, as ``eval_unused=true``), and ranks the
cases by their soft scar volume (infarct + MVO probabilities summed) for the AUROC. The labelled
cases of a run train only its segmentation, so this measures what k labelled LGE studies give
infarct detection through the segmentation, free of a classifier fitted on k cases.

It writes ``OUT/fewshot.csv`` in the format of ``cmrfm fewshot`` (task ``lge-infarct``, metric
``auroc``; ``m_accuracy`` and ``m_balanced_accuracy`` of the rule), which
``benchmarks/fewshot_results.py OUT`` turns into a RESULTS.md section::

    python benchmarks/fewshot_scar_presence.py runs/fewshot/lge-seg --out runs/fewshot/lge-infarct-rule
    python benchmarks/fewshot_results.py runs/fewshot/lge-infarct-rule --variant "scar rule" --write

Each run's case rows are kept in ``OUT/<method>/k<k>_s<seed>.csv``; a rerun reuses them.
"""

from __future__ import annotations

import argparse
import csv
import dataclasses
import time
from pathlib import Path
from typing import Any

import numpy as np

from cmrfm import metrics
from cmrfm.clinical.analyze import MIN_INFARCT_ML
from cmrfm.config import build_config
from cmrfm.engine.checkpoint import load_card
from cmrfm.engine.fewshot import plot_curves, write_csv
from cmrfm.engine.finetune import FinetuneConfig, build_task, load_task_model, split_subjects

#: The segmentation classes that count as scar.
SCAR_CLASSES = ("infarct", "MVO")
DECISION = (
    f"no classifier trained: present when the drawn infarct + MVO is ≥ {MIN_INFARCT_ML} mL (study "
    "analysis' rule without an lge-infarct head); AUROC ranks by the soft scar volume (summed "
    "probabilities)"
)


def case_rows(run: Path, config: FinetuneConfig, data: Any) -> list[dict[str, Any]]:
    """Per case the run did not train on: reference presence, drawn and soft infarct (+ MVO) volume.

    The drawn volume counts the pixels whose arg-max is infarct or MVO; the soft volume sums those
    classes' probabilities, so it still ranks cases when a model draws no scar anywhere.

    Args:
        run: The run folder (``model.safetensors``).
        config: The run's own config (its ``config.yaml``), which drew its k subjects.
        data: The ``lge-seg`` data.
    """
    _, cases = split_subjects(data, dataclasses.replace(config, eval_unused=True))
    model, _ = load_task_model(run / "model.safetensors")
    classes = list(model.task.info.classes)
    scar = [classes.index(name) for name in SCAR_CLASSES]
    totals: dict[str, dict[str, Any]] = {}
    for row in model.task.predict_masks(model, data.make_dataset(cases, False), keep_probs=True):
        voxel_ml = float(np.prod(row["spacing"])) / 1000.0
        case = totals.setdefault(
            row["subject"], {"subject": row["subject"], "present": 0, "ml_pred": 0.0, "ml_soft": 0.0}
        )
        case["present"] |= int(np.isin(row["ref"], scar).any())
        case["ml_pred"] += float(np.isin(row["pred"], scar).sum()) * voxel_ml
        case["ml_soft"] += float(row["probs"][scar].astype(np.float32).sum()) * voxel_ml
    return list(totals.values())


def presence_scores(rows: list[dict[str, Any]], min_ml: float = MIN_INFARCT_ML) -> dict[str, float]:
    """Accuracy and balanced accuracy of ``drawn ≥ min_ml``, and AUROC of the soft volume."""
    y = np.array([int(r["present"]) for r in rows])
    yhat = (np.array([float(r["ml_pred"]) for r in rows]) >= min_ml).astype(int)
    score = np.array([float(r["ml_soft"]) for r in rows])
    return {
        "accuracy": metrics.accuracy(y, yhat),
        "balanced_accuracy": metrics.balanced_accuracy(y, yhat, 2),
        "auroc": metrics.auroc(y, score) if 0 < y.sum() < len(y) else float("nan"),
    }


def _read_cases(path: Path) -> list[dict[str, Any]]:
    with path.open(newline="") as handle:
        return list(csv.DictReader(handle))


def main(argv: list[str] | None = None) -> list[dict[str, Any]]:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("sweep", type=Path, help="a finished lge-seg few-shot sweep folder")
    parser.add_argument(
        "--out", type=Path, required=True, help="folder for fewshot.csv, the plot and case rows"
    )
    args = parser.parse_args(argv)
    runs = sorted(p.parent for p in args.sweep.glob("*/k*_s*/model.safetensors"))
    if not runs:
        raise SystemExit(f"{args.sweep}: no finished runs (<method>/k<k>_s<seed>/model.safetensors)")
    data = build_task("lge-seg").load_data()
    table = []
    for run in runs:
        method, name = run.parent.name, run.name
        config = build_config(FinetuneConfig, [run / "config.yaml"])
        cache = args.out / method / f"{name}.csv"
        started = time.perf_counter()
        if cache.is_file():
            rows = _read_cases(cache)
        else:
            rows = case_rows(run, config, data)
            write_csv(rows, cache)
        seconds = time.perf_counter() - started
        scores = presence_scores(rows)
        k = config.k_subjects or "all"
        table.append(
            {
                "task": "lge-infarct",
                "method": method,
                "k": k,
                "seed": config.seed,
                "metric": "auroc",
                "value": scores["auroc"],
                "steps": 0,
                "decision": DECISION,
                "batch_size": config.batch_size,
                "image_size": config.image_size,
                "fold": config.fold,
                "seconds": 0.0,  # nothing trained: the segmentation's cost is via_seconds
                "eval_seconds": round(seconds, 1),
                "eval_unused": True,
                "eval_subjects": len(rows),
                "via_run": str(run),
                "via_steps": config.steps,
                "via_seconds": float(load_card(run / "model.safetensors")["train_seconds"]),
                **{f"m_{key}": value for key, value in scores.items()},
            }
        )
        print(f"{method} k={k} seed {config.seed}: " + ", ".join(f"{a} {b:.3f}" for a, b in scores.items()))
    order = {str(k): i for i, k in enumerate([1, 2, 5, 10, 20, "all"])}
    table.sort(key=lambda r: (order.get(str(r["k"]), 99), r["seed"], r["method"]))
    write_csv(table, args.out / "fewshot.csv")
    plot_curves(table, args.out / "fewshot.png", "auroc", "lge-infarct (scar rule)")
    return table


if __name__ == "__main__":
    main()
