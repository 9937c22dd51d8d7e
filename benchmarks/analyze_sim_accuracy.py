"""Accuracy of ``cmrfm analyze`` on simulated studies it never trained on, against the simulator's truth.

Each study is simulated from its own seed (by default far from the seeds of the cohorts the task
heads train on, which are ``subject_seed(cohort_seed, i)``), its cine SAX stack written as NIfTI
images without labels, and analysed as a user would. The analysis is compared with the truth the
simulator measured on its own label masks: LV/RV EDV and EF, LV mass. Several weight folders can
be compared side by side on the same studies (``--weights NAME=DIR``), e.g. the shipped heads
against a candidate ``sax-seg``.

This is the domain of the README's first command (``cmrfm analyze --example``): a head that only
saw real scans can read simulated ones badly, and this benchmark says by how much.

Usage: ``python benchmarks/analyze_sim_accuracy.py [--weights NAME=DIR ...] [--seeds 101,202,...]
[--out DIR] [--write]``; ``--write`` rewrites this script's section of ``benchmarks/RESULTS.md``.
"""

from __future__ import annotations

import argparse
import csv
import shutil
import sys
from pathlib import Path
from typing import Any

import numpy as np
from results import machine_line, replace_section, weight_folders

from cmrfm.cli.analyze import EXAMPLE_TRUTH_KEYS
from cmrfm.clinical.analyze import AnalyzeOptions, analyze_path
from cmrfm.clinical.bundle import ModelBundle
from cmrfm.constants import Sequence, View

ROOT = Path(__file__).resolve().parents[1]
HEADING = "## Analysis accuracy on held-out simulated studies (benchmarks/analyze_sim_accuracy.py)"
DEFAULT_SEEDS = (101, 202, 303, 404, 505, 606)
MEASURES = ("lv_edv_ml", "lv_ef_pct", "rv_edv_ml", "rv_ef_pct", "lv_mass_g")


def write_study(seed: int, folder: Path) -> dict[str, Any]:
    """Simulates study ``seed``, writes its cine SAX images to ``folder``; returns group and truth."""
    from cmrfm.io.writers import save_series
    from cmrfm.simulate import SimConfig, simulate_study

    study = simulate_study(seed, SimConfig(), study_id=f"sim{seed}")
    if folder.exists():
        shutil.rmtree(folder)
    folder.mkdir(parents=True)
    for series in study.series:
        if series.sequence == Sequence.CINE and series.view == View.SAX:
            save_series(series, folder / f"{series.name}.nii", write_labels=False)
    simulated = study.clinical.extra["truth"]
    truth = {key: float(simulated[source]) * scale for source, key, scale in EXAMPLE_TRUTH_KEYS}
    return {"group": str(study.clinical.group.value), "truth": truth}


def run(weights: dict[str, Path], seeds: list[int], out: Path) -> list[dict[str, Any]]:
    """Analyses every seed's study with every weight folder; one row per (study, weights)."""
    bundles = {name: ModelBundle.load(folder, tasks=["sax-seg"]) for name, folder in weights.items()}
    for name, bundle in bundles.items():
        if not bundle.has("sax-seg"):
            raise SystemExit(
                f"{weights[name]}: no sax-seg weights ({bundle.errors.get('sax-seg', 'missing')})"
            )
    rows = []
    for seed in seeds:
        study = write_study(seed, out / "inputs" / f"sim{seed}")
        for name, bundle in bundles.items():
            _, m = analyze_path(out / "inputs" / f"sim{seed}", bundle, out / name, AnalyzeOptions())
            row: dict[str, Any] = {"seed": seed, "group": study["group"], "weights": name}
            for key in MEASURES:
                row[f"{key}_truth"] = round(study["truth"][key], 1)
                row[f"{key}_measured"] = m.get(key)
            rows.append(row)
            print(", ".join(f"{k} {v}" for k, v in row.items()), flush=True)
    return rows


def summary(rows: list[dict[str, Any]], weights: list[str]) -> dict[str, dict[str, float]]:
    """Mean absolute and mean signed error per weights and measure."""
    out: dict[str, dict[str, float]] = {}
    for name in weights:
        mine = [r for r in rows if r["weights"] == name]
        for key in MEASURES:
            errors = [
                r[f"{key}_measured"] - r[f"{key}_truth"] for r in mine if r[f"{key}_measured"] is not None
            ]
            out.setdefault(name, {})[f"{key}_mae"] = (
                float(np.mean(np.abs(errors))) if errors else float("nan")
            )
            out[name][f"{key}_bias"] = float(np.mean(errors)) if errors else float("nan")
    return out


def section(rows: list[dict[str, Any]], weights: dict[str, Path], seeds: list[int], command: str) -> str:
    """The RESULTS.md section: one MAE (bias) table, weights side by side."""
    stats = summary(rows, list(weights))
    groups = ", ".join(f"{r['seed']} {r['group']}" for r in rows if r["weights"] == next(iter(weights)))
    lines = [
        HEADING,
        "",
        machine_line(command),
        "",
        f"{len(seeds)} simulated studies (seed and group: {groups}), cine SAX only, analysed from "
        "NIfTI images without labels; truth from the simulator's label masks. Weights: "
        + "; ".join(f"`{name}` = `{folder}`" for name, folder in weights.items())
        + ".",
        "",
        "| measure: mean absolute error (mean signed) | " + " | ".join(weights) + " |",
        "|---|" + "---|" * len(weights),
    ]
    for key in MEASURES:
        cells = [f"{stats[n][f'{key}_mae']:.1f} ({stats[n][f'{key}_bias']:+.1f})" for n in weights]
        lines.append(f"| {key} | " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> None:
    """Command line entry."""
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--weights", action="append", default=[], help="NAME=DIR (repeatable)")
    parser.add_argument("--seeds", default=",".join(str(s) for s in DEFAULT_SEEDS))
    parser.add_argument("--out", type=Path, default=Path("runs/analyze_sim_accuracy"))
    parser.add_argument("--write", action="store_true", help="rewrite this section of RESULTS.md")
    args = parser.parse_args(argv)
    weights = weight_folders(args.weights, ROOT / "weights")
    seeds = [int(s) for s in args.seeds.split(",") if s.strip()]
    rows = run(weights, seeds, args.out)
    args.out.mkdir(parents=True, exist_ok=True)
    with (args.out / "per_study.csv").open("w", newline="") as handle:
        writer = csv.DictWriter(handle, fieldnames=list(rows[0]))
        writer.writeheader()
        writer.writerows(rows)
    command = "python benchmarks/analyze_sim_accuracy.py " + " ".join(sys.argv[1:] if argv is None else argv)
    text = section(rows, weights, seeds, command.strip())
    print(text)
    if args.write:
        replace_section(HEADING, text)


if __name__ == "__main__":
    main()
