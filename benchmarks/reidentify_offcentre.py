"""Series identification when the first-guess crop misses the heart: first reading vs re-reading.

Study analysis classifies each series (sequence, view, quality) on a crop around a heuristic heart
centre, segments it with the task that reading calls for (which re-centres the segmentation crop on
the predicted heart), and then reads the series again on crops centred on that heart
(:func:`cmrfm.clinical.analyze.reidentify_on_heart`). This benchmark forces the first-guess crop
``shift`` pixels (1.5 mm grid) off the true heart centre in a random direction (fixed per series)
and runs those steps exactly as analysis does, on simulated SAX series no shipped head was trained
on (``sim_seed`` 7 onwards): the ED and ES frames as single-frame series (what an ACDC-style ED+ES
pair gives), the whole cine, the LGE stack and the T1 and T2 maps. Only series whose first reading
calls for a segmentation task with weights are re-read (shipped: ``sax-seg``, ``lge-seg``; a map
read as a map has no shipped segmentation, one misread as LGE is segmented and re-read)::

    python benchmarks/reidentify_offcentre.py --subjects 8 --write
"""

from __future__ import annotations

import argparse
import shlex
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch
from results import machine_line, publish

from cmrfm.clinical import analyze as clinical
from cmrfm.clinical.bundle import ModelBundle
from cmrfm.constants import Sequence
from cmrfm.data.preprocess import heart_centre_of_masks
from cmrfm.data.study import Series
from cmrfm.simulate import SimConfig, simulate_study

ROOT = Path(__file__).resolve().parents[1]
TITLE = "Series identification with the first-guess crop off the heart (benchmarks/reidentify_offcentre.py)"
GRID_MM = 1.5


def sax_series(seed: int, frames: int) -> list[tuple[str, Series]]:
    """``(kind, series)`` of one simulated subject: ED and ES frames, cine, LGE, T1 and T2 maps."""
    sequences = ("cine", "lge", "t1map", "t2map")
    study = simulate_study(seed, SimConfig(n_frames=frames, sequences=sequences, views=("sax",)))
    by_sequence = {s.sequence: s for s in study.series}
    cine = by_sequence[Sequence.CINE]
    ed = int(study.clinical.ed_frame or 0)
    es = int(study.clinical.es_frame or frames // 3)
    return [
        ("ED frame", cine.frame(ed)),
        ("ES frame", cine.frame(es)),
        ("cine", cine),
        ("LGE", by_sequence[Sequence.LGE]),
        ("T1 map", by_sequence[Sequence.T1_MAP]),
        ("T2 map", by_sequence[Sequence.T2_MAP]),
    ]


def read_off_centre(series: Series, bundle: ModelBundle, shift_px: float, angle: float) -> dict[str, Any]:
    """First reading on a crop ``shift_px`` off the true heart, segmentation, and the re-reading."""
    truth = heart_centre_of_masks(series.labels.values())
    assert truth is not None, "simulated series carry labels"
    cache = clinical.PreparedCache()
    configs = [loaded.preprocess for loaded in bundle.models.values()]
    for config in configs:
        record = cache.get(series, config, frames=[0]).record
        dx, dy = (shift_px * GRID_MM / s for s in record.in_spacing)  # source pixels
        off = (truth[0] + dx * np.cos(angle), truth[1] + dy * np.sin(angle))
        cache.recentre(series, config, off, "benchmark")
    first = clinical.identify_series(series, bundle, cache, [])
    final, found = first, None
    task_id = clinical.seg_task_for(first)
    if task_id is not None and bundle.has(task_id):
        found = clinical.centre_on_prediction(series, task_id, bundle, cache)
        if found is not None:
            final = clinical.reidentify_on_heart(first, found, bundle, cache, []) or first
    error_mm = None
    if found is not None:
        spacing = series.spacing[:2]
        error_mm = float(np.hypot((found[0] - truth[0]) * spacing[0], (found[1] - truth[1]) * spacing[1]))
    return {
        "first": (first.sequence == series.sequence, first.view == series.view),
        "final": (final.sequence == series.sequence, final.view == series.view),
        "reread": final is not first,
        "centre_error_mm": error_mm,
        "first_reading": f"{first.sequence}/{first.view}",
    }


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--weights", type=Path, default=ROOT / "weights")
    parser.add_argument("--subjects", type=int, default=8)
    parser.add_argument("--sim-seed", type=int, default=7)
    parser.add_argument("--frames", type=int, default=12)
    parser.add_argument("--shifts", default="0,16,24", help="pixels of the 1.5 mm grid")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--write", action="store_true", help="rewrite this section of RESULTS.md")
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)
    bundle = ModelBundle.load(args.weights)
    missing = [t for t in ("sequence-cls", "view-cls", "sax-seg", "lge-seg") if not bundle.has(t)]
    if missing:
        raise SystemExit(f"{args.weights}: no weights for {', '.join(missing)}")
    shifts = [float(s) for s in args.shifts.split(",") if s]
    started = time.perf_counter()
    rng = np.random.default_rng(0)
    rows: dict[tuple[float, str], list[dict[str, Any]]] = {}
    for subject in range(args.subjects):
        for kind, series in sax_series(args.sim_seed + subject, args.frames):
            angle = float(rng.uniform(0, 2 * np.pi))
            for shift in shifts:
                rows.setdefault((shift, kind), []).append(read_off_centre(series, bundle, shift, angle))
        print(
            f"subject {subject + 1}/{args.subjects} done ({time.perf_counter() - started:.0f} s)", flush=True
        )
    lines = [
        "| shift (px / mm) | series | n | sequence right, first / after re-reading | "
        "view right, first / after | re-read | segmented heart centre error (mm, median) |",
        "|---|---|---|---|---|---|---|",
    ]
    for (shift, kind), results in rows.items():
        n = len(results)
        first_seq = sum(r["first"][0] for r in results)
        final_seq = sum(r["final"][0] for r in results)
        first_view = sum(r["first"][1] for r in results)
        final_view = sum(r["final"][1] for r in results)
        errors = [r["centre_error_mm"] for r in results if r["centre_error_mm"] is not None]
        error = f"{np.median(errors):.1f}" if errors else "n/a"
        lines.append(
            f"| {shift:g} / {shift * GRID_MM:g} | {kind} | {n} | {first_seq} / {final_seq} | "
            f"{first_view} / {final_view} | {sum(r['reread'] for r in results)} | {error} |"
        )
    given = argv if argv is not None else sys.argv[1:]
    command = ("python benchmarks/reidentify_offcentre.py " + shlex.join(given)).strip()
    cohort = (
        f"Weights: `{args.weights.name}/`. {args.subjects} simulated subjects (seeds {args.sim_seed}-"
        f"{args.sim_seed + args.subjects - 1}, {args.frames} frames, SAX cine, LGE, T1 and T2 maps); "
        f"every series' first-guess crop moved `shift` pixels off its true heart centre in a random "
        f"direction; counts of series read right; {time.perf_counter() - started:.0f} s."
    )
    publish(TITLE, [machine_line(command), cohort, "\n".join(lines)], args.write)


if __name__ == "__main__":
    main()
