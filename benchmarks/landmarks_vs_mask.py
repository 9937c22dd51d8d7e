"""RV insertion points on held-out ACDC slices: a ``landmarks`` heatmap head vs the ``sax-seg`` mask.

Both methods see the same held-out slices of one fold (the 1.5 mm prepared grid, 128 px crops
centred as in training), every slice whose *manual* labels show a clear RV-LV junction:

* ``landmarks`` head(s): the soft-argmax coordinates of slots 0 and 1;
* ``mask``: :func:`~cmrfm.clinical.geometry.rv_insertion_points` read off the argmax mask of a
  ``sax-seg`` head, which is what ``cmrfm analyze`` falls back on without a landmarks head
  (no point where the predicted mask shows no junction: counted as a miss).

The truth is the same function on the manual labels. The two points are matched to the truth in
the closer order (their identities swap under flips). Errors in mm, over all junction slices and
over the ED mid-ventricular slice of each patient (the one analysis orients the AHA segments by).

Usage: ``python benchmarks/landmarks_vs_mask.py --seg NAME=FILE [--seg ...]
[--landmarks NAME=FILE ...] [--fold 0] [--write]`` (``--seg`` defaults to the shipped ``sax-seg``).
"""

from __future__ import annotations

import argparse
import sys
from collections import defaultdict
from pathlib import Path

import numpy as np
import torch
from results import machine_line, named_paths, replace_section

from cmrfm.clinical.geometry import insertion_points_distance, rv_insertion_points
from cmrfm.data.splits import kfold_splits
from cmrfm.engine.finetune import load_task_model
from cmrfm.tasks.sources import prepared_cache, study_strata

ROOT = Path(__file__).resolve().parents[1]
HEADING = (
    "## Landmarks: RV insertion points, heatmap head vs segmentation mask (benchmarks/landmarks_vs_mask.py)"
)


def held_out_slices(fold: int, folds: int = 5, seed: int = 0) -> list[dict]:
    """Held-out labelled ACDC slices with a junction in the manual labels (fold split as in finetune)."""
    cache = prepared_cache("acdc", "", "").filter(labelled=True)
    subjects, strata = study_strata(cache, "group")
    held = set(kfold_splits(subjects, strata, k=folds, seed=seed)[fold].val)
    rows = []
    for i in range(len(cache)):
        item = cache[i]
        meta = item["meta"]
        if meta["study"] not in held:
            continue
        truth = rv_insertion_points(item["label"])
        if truth is None:
            continue
        rows.append(
            {
                "subject": meta["study"],
                "phase": meta["phase"],
                "slice": int(meta["slice"]),
                "image": item["image"].astype(np.float32),
                "truth": truth,
                "spacing": float(cache.record(i).out_spacing),
            }
        )
    return rows


def mid_ventricular(rows: list[dict]) -> set[int]:
    """Indices of each patient's ED slice nearest the middle of its junction slices."""
    by_subject: dict[str, list[int]] = defaultdict(list)
    for index, row in enumerate(rows):
        if str(row["phase"]).upper() == "ED":
            by_subject[row["subject"]].append(index)
    chosen = set()
    for indices in by_subject.values():
        slices = sorted(rows[i]["slice"] for i in indices)
        middle = slices[len(slices) // 2]
        chosen.add(min(indices, key=lambda i: abs(rows[i]["slice"] - middle)))
    return chosen


def matched_error_mm(points: np.ndarray | None, truth: np.ndarray, spacing: float) -> float:
    """Mean distance of the two points to the truth in the closer order; NaN without points."""
    if points is None:
        return float("nan")
    return insertion_points_distance(points, truth, spacing)


@torch.no_grad()
def predict(model, images: np.ndarray, key: str, batch: int = 32) -> np.ndarray:
    """Model outputs ``key`` for ``(N, H, W)`` images, in chunks."""
    out = []
    for start in range(0, len(images), batch):
        x = torch.as_tensor(images[start : start + batch])[:, None]  # (n, 1, H, W)
        out.append(model({"image": x})[key].float().numpy())
    return np.concatenate(out)


def evaluate(
    rows: list[dict], seg_paths: dict[str, Path], landmark_paths: dict[str, Path]
) -> dict[str, list[float]]:
    """Per-slice errors (mm) of every method, in ``rows`` order."""
    images = np.stack([r["image"] for r in rows])  # (N, H, W)
    errors: dict[str, list[float]] = {}
    for name, path in landmark_paths.items():
        model, _ = load_task_model(path)
        coords = predict(model, images, "coords")[:, :2]  # (N, 2, 2) x, y px
        errors[name] = [
            matched_error_mm(c, r["truth"], r["spacing"]) for c, r in zip(coords, rows, strict=True)
        ]
    for name, path in seg_paths.items():
        seg, _ = load_task_model(path)
        masks = predict(seg, images, "logits").argmax(axis=1)  # (N, H, W) class = internal label id
        errors[f"mask of {name}"] = [
            matched_error_mm(rv_insertion_points(m), r["truth"], r["spacing"])
            for m, r in zip(masks, rows, strict=True)
        ]
    return errors


def summary(values: list[float]) -> str:
    """``mean / median (misses)`` in mm."""
    arr = np.asarray(values, float)
    found = arr[np.isfinite(arr)]
    misses = int((~np.isfinite(arr)).sum())
    if not len(found):
        return "—"
    return f"{found.mean():.1f} / {np.median(found):.1f}" + (
        f" ({misses} without a junction)" if misses else ""
    )


def section(errors: dict[str, list[float]], rows: list[dict], mid: set[int], command: str, fold: int) -> str:
    """The RESULTS.md section."""
    subjects = len({r["subject"] for r in rows})
    lines = [
        HEADING,
        "",
        machine_line(command),
        "",
        f"Fold {fold} held-out: {subjects} patients, {len(rows)} ED/ES slices with a junction in the "
        f"manual labels ({len(mid)} ED mid-ventricular). Error = mean distance of the two points, mm, "
        "mean / median.",
        "",
        "| method | all junction slices | ED mid-ventricular slice |",
        "|---|---|---|",
    ]
    for name, values in errors.items():
        mid_values = [v for i, v in enumerate(values) if i in mid]
        lines.append(f"| {name} | {summary(values)} | {summary(mid_values)} |")
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> None:
    """Command line entry."""
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--seg", action="append", default=[], help="NAME=FILE of a sax-seg model")
    parser.add_argument("--landmarks", action="append", default=[], help="NAME=FILE of a landmarks model")
    parser.add_argument("--fold", type=int, default=0)
    parser.add_argument("--write", action="store_true", help="rewrite this section of RESULTS.md")
    args = parser.parse_args(argv)
    seg = named_paths(
        args.seg or [f"shipped sax-seg={ROOT / 'weights' / 'sax-seg.safetensors'}"], "--seg", "FILE"
    )
    rows = held_out_slices(args.fold)
    errors = evaluate(rows, seg, named_paths(args.landmarks, "--landmarks", "FILE"))
    command = "python benchmarks/landmarks_vs_mask.py " + " ".join(sys.argv[1:] if argv is None else argv)
    text = section(errors, rows, mid_ventricular(rows), command.strip(), args.fold)
    print(text)
    if args.write:
        replace_section(HEADING, text)


if __name__ == "__main__":
    main()
