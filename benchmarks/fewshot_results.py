"""A few-shot sweep's label-efficiency table and plot, as a section of benchmarks/RESULTS.md.

Reads the ``fewshot.csv`` that ``cmrfm fewshot`` writes (one row per run: method, k, seed, primary
metric, budget, seconds), prints mean ± sd over seeds per method and k, the paired difference
pretrained − scratch per seed, and draws the label-efficiency plot into ``benchmarks/images/``::

    cmrfm fewshot --task sax-seg --k 1,2,5,10 --seeds 3 --init weights/cmrfm_vit_tiny_mae.safetensors \\
        --out runs/fewshot/sax-seg steps=100 batch_size=8 fold=0
    python benchmarks/fewshot_results.py runs/fewshot/sax-seg --write

A sweep stopped early (runs are ordered k, seed, method) is summarised over the runs it finished.
"""

from __future__ import annotations

import argparse
import csv
import platform
from collections import defaultdict
from datetime import UTC, datetime
from pathlib import Path

import numpy as np
from results import update_section

from cmrfm.engine.fewshot import plot_curves

IMAGES = Path(__file__).resolve().parent / "images"


def read_rows(path: Path) -> list[dict[str, str]]:
    """The sweep's rows."""
    with path.open(newline="") as handle:
        return list(csv.DictReader(handle))


def summarise(
    rows: list[dict[str, str]], column: str = "value"
) -> tuple[list[str], list[str], dict[tuple[str, str], list[float]]]:
    """Methods, ks (in sweep order) and the values of ``column`` per (method, k)."""
    values: dict[tuple[str, str], list[float]] = defaultdict(list)
    for row in rows:
        if row.get(column, "") != "":
            values[(row["method"], row["k"])].append(float(row[column]))
    methods = list(dict.fromkeys(r["method"] for r in rows))
    ks = list(dict.fromkeys(r["k"] for r in rows))
    return methods, ks, values


def paired_gain(rows: list[dict[str, str]], k: str, a: str = "pretrained", b: str = "scratch") -> list[float]:
    """Per seed, ``a`` minus ``b`` at ``k`` (seeds where both finished)."""
    by = {(r["method"], r["seed"]): float(r["value"]) for r in rows if r["k"] == k}
    seeds = sorted({s for (_, s) in by})
    return [by[(a, s)] - by[(b, s)] for s in seeds if (a, s) in by and (b, s) in by]


def _table(rows: list[dict[str, str]], column: str) -> list[str]:
    """One markdown table: a row per method, a column per k, mean ± sd over seeds."""
    methods, ks, values = summarise(rows, column)
    lines = ["| method | " + " | ".join(f"k = {k}" for k in ks) + " |", "|---|" + "---|" * len(ks)]
    for method in methods:
        cells = []
        for k in ks:
            v = values.get((method, k), [])
            cells.append(f"{np.mean(v):.3f} ± {np.std(v):.3f} (n={len(v)})" if v else "–")
        lines.append(f"| {method} | " + " | ".join(cells) + " |")
    return lines


def _budget(row: dict[str, str]) -> str:
    """A run's training budget in words."""
    if row.get("decision"):
        return row["decision"]
    if row["steps"] == "0":
        return f"the head fitted exactly (no gradient steps) at {row['image_size']} px"
    return f"{row['steps']} steps × batch {row['batch_size']} at {row['image_size']} px"


def _evaluated_on(rows: list[dict[str, str]]) -> str:
    """Which subjects the runs were evaluated on (``eval_unused`` widens it beyond the fold).

    A sweep can mix both (``k = all`` leaves out only the held-out fold): each set names its k.
    """
    unused = [r for r in rows if r.get("eval_unused") == "True"]
    if not unused:
        return "that fold's held-out subjects"
    counts = sorted({int(float(r["eval_subjects"])) for r in unused})
    span = f"{counts[0]}-{counts[-1]}" if counts[0] != counts[-1] else f"{counts[0]}"
    text = (
        "every subject the run did not train on (`eval_unused=true`: the held-out fold plus the rest "
        f"of its training part, {span} subjects)"
    )
    if len(unused) == len(rows):
        return text
    ks = ", ".join(dict.fromkeys(r["k"] for r in unused))
    fold_ks = ", ".join(dict.fromkeys(r["k"] for r in rows if r.get("eval_unused") != "True"))
    return f"{text} at k = {ks}, and that fold's held-out subjects at k = {fold_ks}"


def _via_line(rows: list[dict[str, str]]) -> list[str]:
    """For a ``--via`` sweep: which segmentation runs it worked from, and their budget."""
    if not rows[0].get("via_run"):
        return []
    folders = sorted({Path(r["via_run"]).parents[1].name for r in rows})
    steps = sorted({r["via_steps"] for r in rows})
    minutes = sum(float(r["via_seconds"]) for r in rows) / 60
    return [
        f"Each run works from the segmentation run of its method, k and seed in `{', '.join(folders)}` "
        f"(`--via`; {'/'.join(steps)} steps each, {minutes:.0f} min of segmentation training in all, "
        "on the labels of the same k subjects); the method names that segmentation's start."
    ]


def _start_line(rows: list[dict[str, str]]) -> list[str]:
    """Each method's start weights (``--init``, ``--start``); a ``--via`` sweep names its runs instead."""
    if rows[0].get("via_run") or not any(r.get("init") for r in rows):
        return []
    starts = []
    for method in dict.fromkeys(r["method"] for r in rows):
        inits = list(dict.fromkeys(r.get("init", "") for r in rows if r["method"] == method))
        shown = f"`{'/'.join(Path(inits[0]).parts[-4:])}`" if inits[0] else "random weights"
        per_seed = f" (one per seed, {len(inits)} in all)" if len(inits) > 1 else ""
        starts.append(f"{method} from {shown}{per_seed}")
    return [f"Start weights: {'; '.join(starts)}."]


def section(rows: list[dict[str, str]], sweep: Path, plot_name: str, extra: tuple[str, ...] = ()) -> str:
    """The markdown body: budget, table (and one per ``extra`` metric), paired gains, plot."""
    methods, ks, _ = summarise(rows)
    first = rows[0]
    minutes = sum(float(r["seconds"]) for r in rows) / 60
    lines = [
        f"Machine: {platform.processor() or platform.machine()}; date {datetime.now(UTC):%Y-%m-%d}. "
        f"Sweep folder `{sweep.name}`, {len(rows)} runs, {minutes:.0f} min of training in all (on a "
        "shared 2-core machine).",
        f"Budget of every run: {_budget(first)}; k labelled training subjects drawn (nested, "
        f"stratified) from the training part of fold {first['fold']}, evaluated on {_evaluated_on(rows)}; "
        f"metric `{first['metric']}` (mean ± sd over seeds, n = seeds finished).",
        *_via_line(rows),
        *_start_line(rows),
        "",
        *_table(rows, "value"),
    ]
    for name in extra:
        if not any(r.get(f"m_{name}", "") != "" for r in rows):
            raise SystemExit(f"{sweep / 'fewshot.csv'}: no metric {name!r} in the runs")
        lines += ["", f"The same runs, `{name}`:", "", *_table(rows, f"m_{name}")]
    if {"pretrained", "scratch"} <= set(methods):
        gains = []
        for k in ks:
            g = paired_gain(rows, k)
            if g:
                wins = sum(x > 0 for x in g)
                gains.append(f"k = {k}: {np.mean(g):+.3f} ({wins}/{len(g)} seeds better)")
        lines += ["", "Pretrained − scratch, paired by seed: " + "; ".join(gains) + "."]
    lines += ["", f"![label efficiency](images/{plot_name})"]
    return "\n".join(lines)


def section_names(task: str, variant: str = "") -> tuple[str, str]:
    """RESULTS.md section title and plot file name of a sweep (a named variant gets its own)."""
    variant = variant.strip()
    if not variant:
        return f"Few-shot label efficiency: {task} (`cmrfm fewshot`)", f"fewshot_{task}.png"
    slug = "".join(c if c.isalnum() else "-" for c in variant.lower())
    return f"Few-shot label efficiency: {task}, {variant} (`cmrfm fewshot`)", f"fewshot_{task}_{slug}.png"


def main(argv: list[str] | None = None) -> str:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("sweep", type=Path, help="folder holding fewshot.csv (and fewshot.png)")
    parser.add_argument("--write", action="store_true", help="rewrite this task's RESULTS.md section")
    parser.add_argument(
        "--also", default="", help="further metrics to tabulate, comma-separated (e.g. accuracy)"
    )
    parser.add_argument(
        "--variant",
        default="",
        help="name of a second sweep of the same task (e.g. '1000 steps'): its own section and plot",
    )
    args = parser.parse_args(argv)
    rows = read_rows(args.sweep / "fewshot.csv")
    if not rows:
        raise SystemExit(f"{args.sweep / 'fewshot.csv'}: no finished runs")
    task = rows[0]["task"]
    title, plot_name = section_names(task, args.variant)
    extra = tuple(m.strip() for m in args.also.split(",") if m.strip())
    body = section(rows, args.sweep, plot_name, extra)
    print(body)
    if args.write:
        IMAGES.mkdir(exist_ok=True)
        numeric = [{**r, "value": float(r["value"])} for r in rows]
        plot_curves(numeric, IMAGES / plot_name, rows[0]["metric"], task)  # also for a partial sweep
        update_section(title, body)
    return body


if __name__ == "__main__":
    main()
