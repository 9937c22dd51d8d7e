"""Simulator speed: SAX cine 2D frames per second per core, study and item throughput.

Runs single-threaded (BLAS/OpenMP pinned to one thread) and reports CPU-time rates (frames per
CPU-second = per core) next to wall-clock rates (affected by other load on a shared machine).
Prints a table and replaces the "Simulator speed" section of benchmarks/RESULTS.md.

    python benchmarks/bench_simulator.py [--frames 25] [--slices 4] [--no-write]
"""

from __future__ import annotations

import os

for _var in ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS"):
    os.environ.setdefault(_var, "1")

import argparse  # noqa: E402
import platform  # noqa: E402
import time  # noqa: E402
from datetime import UTC, datetime  # noqa: E402
from pathlib import Path  # noqa: E402

import numpy as np  # noqa: E402
from results import update_section  # noqa: E402

from cmrfm.constants import Group, Sequence  # noqa: E402
from cmrfm.simulate.anatomy import Phantom  # noqa: E402
from cmrfm.simulate.contrast import signal_table  # noqa: E402
from cmrfm.simulate.generator import make_config, simulate_study  # noqa: E402
from cmrfm.simulate.params import sample_subject  # noqa: E402
from cmrfm.simulate.planes import sax_stack  # noqa: E402
from cmrfm.simulate.render import acquire  # noqa: E402
from cmrfm.simulate.tissue import label_lookup  # noqa: E402

RESULTS = Path(__file__).resolve().parent / "RESULTS.md"
GOAL_FRAMES_PER_S = 50.0


def machine() -> str:
    """One line describing where the numbers come from."""
    cpu = platform.processor() or platform.machine()
    return (
        f"{platform.node() or 'host'}, {cpu}, {os.cpu_count()} logical CPUs, "
        f"Python {platform.python_version()}, numpy {np.__version__}"
    )


def timed(fn):
    cpu, wall = time.process_time(), time.perf_counter()
    out = fn()
    return out, time.process_time() - cpu, time.perf_counter() - wall


def bench_cine(matrix: int, frames: int, slices: int, supersample: int, depth: int, grade: int = 1) -> dict:
    rng = np.random.default_rng(0)
    phantom = Phantom(sample_subject(0, group=Group.NOR))
    spacing = 340.0 / matrix
    planes = sax_stack(phantom, (matrix, matrix), spacing, 8.0, 2.0, 2.0, rng)
    mid = len(planes) // 2
    chosen = planes[max(0, mid - slices // 2) : max(0, mid - slices // 2) + slices]
    table = signal_table(Sequence.CINE, 1.5, rng, 900.0, 0.03)
    t = np.arange(frames) / frames

    def run():
        return acquire(phantom, chosen, t, table, label_lookup(False, False), np.zeros((len(chosen), 3)), rng,
                       supersample=supersample, depth_samples=depth, grade=grade)  # fmt: skip

    _, cpu, wall = timed(run)
    n = len(chosen) * frames
    return {"frames": n, "cpu_fps": n / cpu, "wall_fps": n / wall}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--frames", type=int, default=25)
    parser.add_argument("--slices", type=int, default=4)
    parser.add_argument("--no-write", action="store_true", help="Print only; leave RESULTS.md alone.")
    args = parser.parse_args()
    rows = []
    for matrix, ss, depth, grade, note in (
        (256, 2, 3, 1, "default rendering (2×2 in-plane, 3 through-plane samples)"),
        (256, 1, 1, 1, "no partial-volume supersampling"),
        (160, 2, 3, 1, "demo matrix"),
        (256, 2, 3, 3, "with grade-3 respiratory k-space artefact (5 positions)"),
    ):
        r = bench_cine(matrix, args.frames, args.slices, ss, depth, grade)
        rows.append((f"SAX cine {matrix}×{matrix}", note, r["frames"], r["cpu_fps"], r["wall_fps"]))
    phantom_cpu = timed(lambda: Phantom(sample_subject(1, group=Group.DCM)))[1]
    config = make_config([])
    study, cpu, wall = timed(lambda: simulate_study(0, config))
    n_frames = sum(s.num_slices * s.num_frames for s in study.series)
    rows.append(
        (
            "simulate_study (demo defaults)",
            f"{len(study.series)} series, {n_frames} frames, 160×160",
            n_frames,
            n_frames / cpu,
            n_frames / wall,
        )
    )
    from cmrfm.simulate.dataset import SimulatedSliceDataset

    item_config = make_config(
        ["imaging.matrix=[128,128]", "sequences=[cine,lge,t1map,t2map]", "views=[sax,2ch,3ch,4ch]"]
    )
    data = SimulatedSliceDataset(item_config, seed=0, length=64, items_per_subject=16)
    _, cpu, wall = timed(lambda: list(data))
    rows.append(
        (
            "SimulatedSliceDataset items",
            "128×128, all sequences/views, 16 items/subject",
            64,
            64 / cpu,
            64 / wall,
        )
    )
    header = (
        "| workload | setting | frames/items | per CPU-second (per core) | per wall-second |\n"
        "|---|---|---|---|---|"
    )
    lines = [header] + [f"| {a} | {b} | {c} | {d:.1f} | {e:.1f} |" for a, b, c, d, e in rows]
    goal = rows[0][3]
    verdict = "meets" if goal >= GOAL_FRAMES_PER_S else "misses"
    body = "\n".join(
        [
            f"Machine: {machine()}; single-threaded numpy. Date: {datetime.now(UTC):%Y-%m-%d %H:%M} UTC.",
            "Command: `python benchmarks/bench_simulator.py`",
            "",
            *lines,
            "",
            f"Goal: >= {GOAL_FRAMES_PER_S:.0f} SAX cine 2D frames/s per core at 256×256: default rendering "
            f"{verdict} it ({goal:.1f} frames per CPU-second). Subject setup (heart model, RV calibration): "
            f"{phantom_cpu:.2f} CPU-s.",
            "Wall-clock rates are lower when the shared machine is loaded; CPU-second rates are the per-core "
            "figure.",
        ]
    )
    print(body)
    if not args.no_write:
        update_section("Simulator speed (benchmarks/bench_simulator.py)", body)


if __name__ == "__main__":
    main()
