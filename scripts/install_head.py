"""Installs a fine-tuned task head into ``weights/<task>.safetensors`` with its model card completed.

Maintainers' tool for the shipped heads (see docs/shipped_heads.md)::

    python scripts/install_head.py RUN_DIR --task lge-seg --status "..." [--replace]
        [--ood-from runs/cv/lge-seg/pretrained] [--card infarct_present_min_ml=0.6]

``RUN_DIR`` is a ``cmrfm finetune`` output folder (``model.safetensors`` + card). The card gains a
``status`` line and, with ``--ood-from`` (a ``benchmarks/tasks_cv.py`` output folder), an ``ood``
entry calibrated on the cross-validation folds' held-out volumes — the way to give a head trained on
every subject (``fold=-1``, so nothing held out) a calibrated out-of-distribution threshold. An
existing installed head is only replaced with ``--replace``. ``--card KEY=VALUE`` (VALUE read as JSON)
adds a calibrated setting that analysis reads from the card, such as ``infarct_present_min_ml``.
"""

from __future__ import annotations

import argparse
import csv
import json
from pathlib import Path

from cmrfm import metrics
from cmrfm.engine.checkpoint import load_weights, save_weights

WEIGHTS = Path(__file__).resolve().parents[1] / "weights"


def cv_entropies(cv_dir: Path) -> list[float]:
    """Held-out ``mean_entropy`` values of every fold of a tasks_cv run."""
    path = cv_dir / "per_subject_all_folds.csv"
    if not path.is_file():
        raise SystemExit(f"{path}: not found (run benchmarks/tasks_cv.py first)")
    with path.open(newline="") as handle:
        rows = list(csv.DictReader(handle))
    if not rows or "mean_entropy" not in rows[0]:
        raise SystemExit(f"{path}: no mean_entropy column (fold runs predate the OOD calibration)")
    return [float(r["mean_entropy"]) for r in rows if r["mean_entropy"] not in ("", "nan")]


def card_entries(pairs: list[str]) -> dict[str, object]:
    """``KEY=VALUE`` strings -> card entries (VALUE parsed as JSON, else kept as text)."""
    out: dict[str, object] = {}
    for pair in pairs:
        key, sep, value = pair.partition("=")
        if not sep or not key:
            raise SystemExit(f"--card {pair!r}: expected KEY=VALUE")
        try:
            out[key] = json.loads(value)
        except json.JSONDecodeError:
            out[key] = value
    return out


def install(
    run: Path,
    task: str,
    status: str,
    ood_from: Path | None,
    replace: bool,
    weights: Path = WEIGHTS,
    extra: dict[str, object] | None = None,
) -> Path:
    """Copies ``run``'s weights to ``weights/<task>.safetensors`` with ``status`` (``ood``, ``extra``)."""
    tensors, card = load_weights(run / "model.safetensors")
    if card.get("task") != task:
        raise SystemExit(f"{run}: holds task {card.get('task')!r}, not {task!r}")
    target = weights / f"{task}.safetensors"
    if target.exists() and not replace:
        raise SystemExit(f"{target} exists: pass --replace to overwrite it")
    card["status"] = status
    card.update(extra or {})
    if ood_from is not None:
        ood = metrics.entropy_threshold(cv_entropies(ood_from))
        if ood is None:
            raise SystemExit(f"{ood_from}: no finite held-out entropies")
        ood["calibration"] += f" (cross-validation folds of {ood_from.name})"
        card["ood"] = ood
    return save_weights(tensors, target, card)


def main(argv: list[str] | None = None) -> None:
    """Command line entry."""
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("run", type=Path, help="cmrfm finetune output folder")
    parser.add_argument("--task", required=True)
    parser.add_argument("--status", required=True, help="one line: what the head is and how good")
    parser.add_argument("--ood-from", type=Path, default=None, help="tasks_cv output folder")
    parser.add_argument("--replace", action="store_true", help="overwrite an installed head")
    parser.add_argument("--weights", type=Path, default=WEIGHTS)
    parser.add_argument("--card", action="append", default=[], help="KEY=VALUE card entry (repeatable)")
    args = parser.parse_args(argv)
    extra = card_entries(args.card)
    path = install(args.run, args.task, args.status, args.ood_from, args.replace, args.weights, extra)
    print(f"installed {path} ({path.stat().st_size / 1e6:.1f} MB)")


if __name__ == "__main__":
    main()
