"""Time of ``cmrfm analyze`` per study: an ED+ES study (10 slices each) and a full cine (10 × 30).

Models: the shipped heads in ``weights/`` where present (a trained ``sax-seg`` also runs the crop
re-centring passes an untrained one may skip), and random-init ``tiny``-preset models of the same
architecture for the tasks without shipped weights (same compute, meaningless outputs; only time
is measured). ``--random-only`` uses random models throughout. Model loading is timed separately.
Studies are simulated (bSSFP SAX, 208² matrix, 30 frames, 10 slices) and written as NIfTI; the
timed path is the user's: load the files, analyse, write masks, JSON and report.

Usage: ``python benchmarks/bench_analyze.py [--repeats 3] [--threads 2] [--random-only]
[--no-write]``; prints a table and rewrites its section of ``benchmarks/RESULTS.md``.
"""

from __future__ import annotations

import argparse
import datetime as dt
import platform
import shutil
import statistics
import tempfile
import time
from pathlib import Path

import numpy as np
import torch
from results import replace_section

from cmrfm.clinical.analyze import AnalyzeOptions, analyze_path
from cmrfm.clinical.bundle import ModelBundle, write_random_weights
from cmrfm.data.study import Series
from cmrfm.io.writers import save_series
from cmrfm.simulate import SimConfig, simulate_study
from cmrfm.simulate.config import ImagingConfig

HEADING = "## Study analysis speed (benchmarks/bench_analyze.py)"
#: The repository's shipped heads, used where present (``--random-only`` skips them).
SHIPPED = Path(__file__).resolve().parents[1] / "weights"
#: Tasks a cine SAX study runs.
TASKS = ("sequence-cls", "view-cls", "quality-cls", "sax-seg", "landmarks", "disease-cls")
SLICES = 10
FRAMES = 30


def make_inputs(folder: Path) -> dict[str, Path]:
    """Writes the two benchmark studies: ED+ES frame files, and a 4D cine."""
    config = SimConfig(
        n_frames=FRAMES, sequences=("cine",), views=("sax",), imaging=ImagingConfig(matrix=(208, 208))
    )
    study = simulate_study(0, config)
    sax = study.series[0]
    keep = np.round(np.linspace(0, sax.num_slices - 1, SLICES)).astype(int)  # exactly 10 slices
    image = sax.image[:, :, keep]  # (X, Y, 10, T)
    positions = sax.positions()[keep]
    positions[:, :] = sax.positions()[0] + np.arange(SLICES)[:, None] * sax.affine[:3, 2] * 0.9
    cine = Series("sax_cine", image, sax.affine, sax.sequence, sax.view, slice_positions=positions)
    es = int(study.clinical.es_frame or FRAMES // 3)
    ed_es = folder / "ed_es"
    ed_es.mkdir(parents=True)
    for number, t in (("01", 0), (f"{es + 1:02d}", es)):
        frame = cine.frame(t)
        frame.name = f"patient_frame{number}"
        save_series(frame, ed_es / f"patient_frame{number}.nii.gz", write_labels=False)
    full = folder / "cine"
    full.mkdir()
    save_series(cine, full / "sax_cine.nii.gz", write_labels=False)
    return {"ED+ES (2 × 10 slices)": ed_es, f"full cine ({SLICES} × {FRAMES})": full}


def run(repeats: int, threads: int, write: bool, tta: bool, shipped: bool = True) -> str:
    """Runs the benchmark and returns the Markdown section."""
    torch.set_num_threads(threads)
    work = Path(tempfile.mkdtemp(prefix="cmrfm-bench-analyze-"))
    try:
        weights = work / "weights"
        write_random_weights(weights, tasks=TASKS, preset="tiny", image_size=128)
        trained = []
        for task in TASKS if shipped else ():
            source = SHIPPED / f"{task}.safetensors"
            if source.is_file():  # the real head: trained weights also decide re-centring passes
                shutil.copy(source, weights / source.name)
                shutil.copy(source.with_suffix(".json"), weights / f"{task}.json")
                trained.append(task)
        started = time.perf_counter()
        bundle = ModelBundle.load(weights, tta=tta)
        load_s = time.perf_counter() - started
        inputs = make_inputs(work / "inputs")
        rows = []
        # both segmentation settings side by side, alternating, so machine load hits them alike
        settings = {"default (plain + half-patch jitter)": True, "`--no-jitter` (one pass)": False}
        for label, path in inputs.items():
            totals: dict[str, list[float]] = {name: [] for name in settings}
            parts: dict[str, list[dict]] = {name: [] for name in settings}
            for r in range(repeats):
                for name, jitter in settings.items():
                    bundle.jitter = jitter
                    out = work / f"out{r}"
                    t0 = time.perf_counter()
                    _, m = analyze_path(path, bundle, out, AnalyzeOptions(report=True))
                    totals[name].append(time.perf_counter() - t0)
                    parts[name].append(m["timing_s"])
                    shutil.rmtree(out)
            for name in settings:
                best = int(np.argmin(totals[name]))
                times = totals[name]
                rows.append((f"{label}, {name}", statistics.median(times), min(times), parts[name][best]))
    finally:
        shutil.rmtree(work, ignore_errors=True)
    now = dt.datetime.now(dt.UTC).strftime("%Y-%m-%d %H:%M UTC")
    cpus = torch.get_num_threads()
    lines = [
        HEADING,
        "",
        f"Machine: {platform.node() or 'unknown'}, {platform.machine()}, {_cpu_count()} logical CPUs "
        f"(shared with other jobs), torch {torch.__version__} with {cpus} thread(s). Date: {now}. "
        f"Command: `python benchmarks/bench_analyze.py --repeats {repeats} --threads {threads}"
        f"{' --tta' if tta else ''}{'' if shipped else ' --random-only'}`.",
        "",
        f"Models: the shipped heads of `weights/` ({', '.join(trained) or 'none'}); "
        f"random-init `tiny`-preset models of the same architecture for the others "
        f"({', '.join(t for t in TASKS if t not in trained) or 'none'}; ViT 192-d, depth 8, patch 8, "
        "128 px: same compute, meaningless outputs). Inputs: simulated bSSFP SAX, 208×208 matrix, "
        "NIfTI on disk. Timed: load files + analysis (including the crop re-centring passes) + masks, "
        "JSON, HTML report.",
        "",
        f"Model loading (separate, once per run): {load_s:.2f} s.",
        "",
        "| study | median s | best s | load s | analysis s | report s |",
        "|---|---|---|---|---|---|",
    ]
    for label, median, best, timing in rows:
        lines.append(
            f"| {label} | {median:.2f} | {best:.2f} | {timing.get('load', 0):.2f} | "
            f"{timing.get('analysis', 0):.2f} | {timing.get('report', 0):.2f} |"
        )
    lines += [
        "",
        "Targets (issue 6): ED+ES ≤ 5 s (goal 2 s), full cine ≤ 60 s on 2 CPU cores, loading excluded.",
        "",
    ]
    section = "\n".join(lines)
    print(section)
    if write:
        replace_section(HEADING, section)
    return section


def _cpu_count() -> int:
    import os

    return os.cpu_count() or 0


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--tta", action="store_true", help="time with test-time augmentation")
    parser.add_argument("--no-write", action="store_true", help="print only; leave RESULTS.md alone")
    parser.add_argument("--random-only", action="store_true", help="ignore the shipped heads in weights/")
    args = parser.parse_args()
    run(args.repeats, args.threads, not args.no_write, args.tta, shipped=not args.random_only)


if __name__ == "__main__":
    main()
