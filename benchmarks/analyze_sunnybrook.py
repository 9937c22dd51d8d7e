"""Segmentation accuracy of ``cmrfm analyze`` on the Sunnybrook study: another vendor (GE), never trained on.

The ``sax-seg`` heads trained on ACDC (Siemens, Dijon) alone. Sunnybrook's SAX cine comes from a GE
scanner in Toronto, with manual endocardial and epicardial contours on some slices of some frames.
The study is analysed from its DICOM images only (the contours are dropped before the analysis sees
the study); the cine segmentation on the DICOM grid is then compared with the contours on every
contoured (frame, slice):

* LV blood pool Dice and myocardium Dice (myocardium only where an epicardial contour exists), per
  frame over its contoured slices, then averaged over frames;
* contoured-slice LV volume, predicted vs manual, per frame (both summed over the same slices).

Several weight folders can be compared side by side (``--weights NAME=DIR``).

Usage: ``python benchmarks/analyze_sunnybrook.py [--root DIR] [--weights NAME=DIR ...] [--write]``.
"""

from __future__ import annotations

import argparse
import copy
import sys
from pathlib import Path
from typing import Any

import numpy as np
from results import machine_line, replace_section, weight_folders

from cmrfm import metrics
from cmrfm.clinical.analyze import AnalyzeOptions, analyze
from cmrfm.clinical.bundle import ModelBundle
from cmrfm.constants import Label
from cmrfm.data.adapters.sunnybrook import SunnybrookAdapter

ROOT = Path(__file__).resolve().parents[1]
DEFAULT_ROOT = ROOT.parent / "shared" / "data" / "sunnybrook"
HEADING = "## Analysis on another vendor: Sunnybrook GE cine (benchmarks/analyze_sunnybrook.py)"


def images_only(study):
    """A copy of ``study`` whose series carry no labels (what a user's DICOM folder holds)."""
    bare = copy.copy(study)
    bare.series = []
    for series in study.series:
        clean = copy.copy(series)
        clean.labels = {}
        clean.metadata = {k: v for k, v in series.metadata.items() if k != "labelled_slices"}
        bare.series.append(clean)
    return bare


def frame_scores(pred: np.ndarray, ref: np.ndarray, slices: list[int], voxel_ml: float) -> dict[str, float]:
    """Dice and contoured LV volume of one frame over its contoured ``slices``.

    Args:
        pred: ``(X, Y, Z)`` predicted internal labels.
        ref: ``(X, Y, Z)`` manual labels (only ``slices`` are contoured).
        slices: Contoured slice indices.
        voxel_ml: Voxel volume in mL.
    """
    p, r = pred[:, :, slices], ref[:, :, slices]
    out = {
        "dice_LV": metrics.dice(p, r, int(Label.LV)),
        "lv_ml_pred": float(np.count_nonzero(p == Label.LV)) * voxel_ml,
        "lv_ml_ref": float(np.count_nonzero(r == Label.LV)) * voxel_ml,
    }
    with_epi = [k for k in range(len(slices)) if np.any(r[:, :, k] == Label.MYO)]
    out["dice_MYO"] = (
        metrics.dice(p[:, :, with_epi], r[:, :, with_epi], int(Label.MYO)) if with_epi else float("nan")
    )
    return out


def evaluate(study, weights: dict[str, Path]) -> dict[str, list[dict[str, Any]]]:
    """Per weights folder: one score row per contoured frame."""
    series = study.series[0]
    labelled = {int(t): ks for t, ks in series.metadata["labelled_slices"].items()}
    sx, sy, sz = series.spacing
    bare = images_only(study)
    out = {}
    for name, folder in weights.items():
        bundle = ModelBundle.load(folder, tasks=["sax-seg"])
        if not bundle.has("sax-seg"):
            raise SystemExit(f"{folder}: no sax-seg weights ({bundle.errors.get('sax-seg', 'missing')})")
        result = analyze(bare, bundle, AnalyzeOptions())
        run = result.runs[series.name]
        rows = []
        for t, slices in sorted(labelled.items()):
            scores = frame_scores(run.labels[..., t], series.labels[t], slices, sx * sy * sz / 1000.0)
            rows.append({"frame": t, "slices": len(slices), **scores})
        out[name] = rows
    return out


def section(results: dict[str, list[dict[str, Any]]], weights: dict[str, Path], command: str, study) -> str:
    """The RESULTS.md section."""
    first = next(iter(results.values()))
    lines = [
        HEADING,
        "",
        machine_line(command),
        "",
        f"One study, {study.series[0].shape} voxels, {len(first)} contoured frames "
        f"({sum(r['slices'] for r in first)} contoured slices). Weights: "
        + "; ".join(f"`{name}` = `{folder}`" for name, folder in weights.items())
        + ".",
        "",
        "| measure (mean over contoured frames) | " + " | ".join(results) + " |",
        "|---|" + "---|" * len(results),
    ]
    for key, label in (("dice_LV", "Dice LV blood pool"), ("dice_MYO", "Dice myocardium")):
        cells = [f"{np.nanmean([r[key] for r in rows]):.3f}" for rows in results.values()]
        lines.append(f"| {label} | " + " | ".join(cells) + " |")
    cells = []
    for rows in results.values():
        errors = [r["lv_ml_pred"] - r["lv_ml_ref"] for r in rows]
        cells.append(f"{np.mean(np.abs(errors)):.1f} ({np.mean(errors):+.1f})")
    lines.append("| contoured-slice LV volume, mL: MAE (bias) | " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> None:
    """Command line entry."""
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--root", type=Path, default=DEFAULT_ROOT, help="Sunnybrook root")
    parser.add_argument("--weights", action="append", default=[], help="NAME=DIR (repeatable)")
    parser.add_argument("--write", action="store_true", help="rewrite this section of RESULTS.md")
    args = parser.parse_args(argv)
    if not args.root.is_dir():
        raise SystemExit(f"{args.root}: Sunnybrook data not found (pass --root)")
    studies = SunnybrookAdapter.list_studies(args.root)
    if not studies:
        raise SystemExit(f"{args.root}: no Sunnybrook study found")
    study = SunnybrookAdapter.load_study(studies[0])
    weights = weight_folders(args.weights, ROOT / "weights")
    results = evaluate(study, weights)
    command = "python benchmarks/analyze_sunnybrook.py " + " ".join(sys.argv[1:] if argv is None else argv)
    text = section(results, weights, command.strip(), study)
    print(text)
    if args.write:
        replace_section(HEADING, text)


if __name__ == "__main__":
    main()
