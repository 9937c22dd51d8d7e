"""``cmrfm analyze``: whole CMR studies in, measurements, masks and a report out.

Each INPUT is a study (DICOM folder, NIfTI file, folder of NIfTI frames, ACDC/M&Ms patient folder)
or a folder of studies. Every study gets ``OUT/<study>/`` (``-2``, ``-3``... appended when that
folder exists: nothing is ever overwritten); a batch also gets ``OUT/measurements.csv`` (one row
per study) and ``OUT/failures.csv`` (study, reason). One failing study never stops the others;
the exit code is 1 when any failed. Study names are the loaders' identifier-free keys.
"""

from __future__ import annotations

import csv
import json
import tempfile
from pathlib import Path
from typing import Any

import numpy as np
import typer

from cmrfm.constants import FUNCTION_KEYS
from cmrfm.constants import Sequence as MRSequence

#: Scalar measurement columns of measurements.csv, in order (others follow alphabetically).
CSV_FIRST = ("study", *FUNCTION_KEYS, "ed_frame", "es_frame")
#: Simulator subject of the --example study (an infarct case, so LGE shows scar).
EXAMPLE_SEED = 3
EXAMPLE_GROUP = "MINF"


def csv_row(m: dict[str, Any], folder: str) -> dict[str, Any]:
    """A flat, identifier-free row of one study's measurements."""
    row: dict[str, Any] = {k: m.get(k) for k in CSV_FIRST}
    for key, value in sorted(m.items()):
        if key not in row and isinstance(value, int | float | str) and not isinstance(value, bool):
            row[key] = value
    diagnosis = m.get("diagnosis") or {}
    row["diagnosis"] = diagnosis.get("label")
    lge = m.get("lge")
    if isinstance(lge, dict):
        row["infarct_present"] = lge.get("infarct_present")
        row["infarct_pct"] = lge.get("infarct_pct_of_lv_myocardium")
    row["ood_flag"] = (m.get("ood") or {}).get("flag")
    row["warnings"] = len(m.get("warnings") or [])
    row["folder"] = folder
    row.pop("source", None)
    return row


def _write_csv(path: Path, rows: list[dict[str, Any]], first: tuple[str, ...]) -> None:
    keys = list(dict.fromkeys([*first, *(k for r in rows for k in r)]))
    with path.open("w", newline="") as handle:
        writer = csv.DictWriter(handle, fieldnames=keys)
        writer.writeheader()
        writer.writerows(rows)


#: Simulator truth keys compared with the example's measurements: (truth key, measurement key, scale).
EXAMPLE_TRUTH_KEYS = (
    ("lv_edv_ml_mask", "lv_edv_ml", 1.0),
    ("lv_esv_ml_mask", "lv_esv_ml", 1.0),
    ("lv_ef_mask", "lv_ef_pct", 100.0),
    ("rv_edv_ml_mask", "rv_edv_ml", 1.0),
    ("rv_ef_mask", "rv_ef_pct", 100.0),
    ("lv_mass_g_mask", "lv_mass_g", 1.0),
)


def write_example_input(folder: Path, seed: int = EXAMPLE_SEED) -> tuple[Path, dict[str, Any]]:
    """Simulates the example study (cine SAX + 2CH/4CH + LGE) as NIfTI images without labels.

    Returns the folder and the simulator's truth for the measurements (from its label masks, the
    way a reader would measure them) plus the disease group.
    """
    from cmrfm.io.writers import save_series
    from cmrfm.simulate import SimConfig, simulate_study

    study = simulate_study(seed, SimConfig(groups=(EXAMPLE_GROUP,)), study_id="example")
    folder.mkdir(parents=True, exist_ok=True)
    for series in study.series:
        save_series(series, folder / f"{series.name}.nii", write_labels=False)  # uncompressed: fast
    simulated = study.clinical.extra["truth"]
    truth: dict[str, Any] = {"group": str(study.clinical.group.value)}
    for key, measured, scale in EXAMPLE_TRUTH_KEYS:
        truth[measured] = round(float(simulated[key]) * scale, 1)
    lge = [s for s in study.series if s.sequence == MRSequence.LGE and s.labels]
    if lge:
        truth["infarct_pct_of_lv_myocardium"] = round(infarct_percent(lge[0].labels[0]), 1)
    return folder, truth


def infarct_percent(labels: np.ndarray) -> float:
    """Infarct (scar + MVO) as % of the LV myocardium (all three) in a label volume."""
    from cmrfm.clinical.analyze import lge_voxel_counts

    myocardium, scar, _ = lge_voxel_counts(labels)
    return 100.0 * scar / myocardium if myocardium else 0.0


def compare_with_truth(m: dict[str, Any], truth: dict[str, Any]) -> dict[str, Any]:
    """The example's measurements beside the simulator's truth (and the difference)."""
    rows = {}
    for _, key, _ in EXAMPLE_TRUTH_KEYS:
        value = m.get(key)
        rows[key] = {
            "measured": value,
            "truth": truth[key],
            "difference": None if value is None else round(value - truth[key], 1),
        }
    if "infarct_pct_of_lv_myocardium" in truth:
        lge = m.get("lge")
        lge = lge[0] if isinstance(lge, list) else lge
        value = (lge or {}).get("infarct_pct_of_lv_myocardium")
        expected = truth["infarct_pct_of_lv_myocardium"]
        rows["infarct_pct_of_lv_myocardium"] = {
            "measured": value,
            "truth": expected,
            "difference": None if value is None else round(value - expected, 1),
        }
    diagnosis = (m.get("diagnosis") or {}).get("label")
    rows["diagnosis"] = {"measured": diagnosis, "truth": truth["group"]}
    return rows


def analyze(
    inputs: list[Path] = typer.Argument(None, help="Studies or folders of studies (DICOM or NIfTI)."),
    out: Path = typer.Option(..., "--out", "-o", help="Output folder (one sub-folder per study)."),
    example: bool = typer.Option(False, "--example", help="Simulate an example study and analyse it."),
    weights: Path = typer.Option(
        None, "--weights", help="Folder of <task>.safetensors (default: the shipped weights/)."
    ),
    height: float = typer.Option(None, "--height", help="Body height in cm (BSA indexing)."),
    weight: float = typer.Option(None, "--weight", help="Body weight in kg (BSA indexing)."),
    sex: str = typer.Option(None, "--sex", help="male or female (sex-specific normal ranges)."),
    keep_identifiers: bool = typer.Option(
        False, "--keep-identifiers", help="Keep source paths and DICOM patient attributes in outputs."
    ),
    tta: bool = typer.Option(
        False, "--tta", help="Test-time augmentation (flips): 2 more segmentation passes, adds uncertainty."
    ),
    no_jitter: bool = typer.Option(
        False,
        "--no-jitter",
        help="One segmentation pass instead of two (the default adds one shifted by half a ViT patch).",
    ),
    ranges: Path = typer.Option(None, "--ranges", help="A site's normal-range YAML table."),
    no_report: bool = typer.Option(False, "--no-report", help="Skip report.html and figures."),
    threads: int = typer.Option(
        None, "--threads", help="CPU threads for inference (default: torch's; 1 is best on a busy machine)."
    ),
) -> None:
    """Analyse CMR studies: volumes, EF, mass, diagnosis, LGE scar, masks and an HTML report.

    Writes OUT/<study>/ per study (an existing folder is never overwritten: -2, -3... is appended),
    OUT/measurements.csv and OUT/failures.csv; exits 1 when any study failed. Labels beside the
    images are never used. No patient identifiers in outputs unless --keep-identifiers.
    """
    from rich.console import Console
    from rich.progress import Progress

    from cmrfm.clinical.analyze import AnalyzeOptions, analyze_path, study_paths
    from cmrfm.clinical.bundle import ModelBundle
    from cmrfm.errors import CmrfmError, ConfigError

    if sex is not None and sex.lower() not in ("male", "female"):
        raise ConfigError(f"--sex must be male or female, got {sex!r}")
    if (height is None) != (weight is None):
        raise ConfigError("give both --height and --weight (or neither)")
    if not inputs and not example:
        raise ConfigError("give at least one INPUT, or --example")
    if threads:
        import torch

        torch.set_num_threads(threads)
    console = Console(stderr=True)
    out.mkdir(parents=True, exist_ok=True)
    options = AnalyzeOptions(
        height_cm=height,
        weight_kg=weight,
        sex=sex.lower() if sex else None,
        keep_identifiers=keep_identifiers,
        ranges=str(ranges) if ranges else None,
        report=not no_report,
    )
    bundle = ModelBundle.load(weights, tta=tta, jitter=not no_jitter)
    if not bundle.models:
        console.print(
            f"[yellow]warning:[/] no task weights in {bundle.folder.name}/: only loading and reporting"
        )
    failures: list[dict[str, str]] = []
    studies: list[tuple[str, Path]] = []
    scratch = None
    example_truth: dict[str, Any] = {}
    if example:
        scratch = tempfile.TemporaryDirectory(prefix="cmrfm-example-")
        example_folder, example_truth = write_example_input(Path(scratch.name) / "example")
        studies.append(("example", example_folder))
    for item in inputs or []:
        try:
            studies += [(p.name, p) for p in study_paths(item)]
        except CmrfmError as err:
            failures.append({"study": Path(item).name, "reason": str(getattr(err, "reason", err))})
    rows = []
    try:
        with Progress(console=console, transient=True) as bar:
            job = bar.add_task("analysing", total=len(studies))
            for name, path in studies:
                bar.update(job, description=f"analysing {name}")
                try:
                    folder, m = analyze_path(path, bundle, out, options)
                    rows.append(csv_row(m, folder.name))
                    console.print(f"{folder.name}: done ({len(m['warnings'])} warning(s))")
                    if example and name == "example" and path == example_folder:
                        _report_example_truth(folder, compare_with_truth(m, example_truth), console)
                except CmrfmError as err:
                    failures.append({"study": name, "reason": str(getattr(err, "reason", err))})
                    console.print(f"[red]{name}: failed[/] ({getattr(err, 'reason', err)})")
                except Exception as err:  # one bad study never stops the batch
                    failures.append({"study": name, "reason": f"{type(err).__name__}: {err}"})
                    console.print(f"[red]{name}: failed[/] ({type(err).__name__})")
                bar.advance(job)
    finally:
        if scratch is not None:
            scratch.cleanup()
    if rows:
        _write_csv(out / "measurements.csv", rows, CSV_FIRST)
    _write_csv(out / "failures.csv", failures, ("study", "reason"))
    console.print(f"{len(rows)} analysed, {len(failures)} failed; outputs in {out}")
    if failures:
        raise typer.Exit(1)


def _report_example_truth(folder: Path, comparison: dict[str, Any], console: Any) -> None:
    """Writes ``example_truth.json`` beside the measurements and prints the comparison."""
    (folder / "example_truth.json").write_text(json.dumps(comparison, indent=2) + "\n")
    cells = [
        f"{key} {row['measured']} (truth {row['truth']})"
        for key, row in comparison.items()
        if key
        in ("lv_ef_pct", "rv_ef_pct", "lv_edv_ml", "lv_mass_g", "infarct_pct_of_lv_myocardium", "diagnosis")
    ]
    console.print("example vs simulator truth: " + "; ".join(cells))


def register(app: typer.Typer) -> None:
    """Adds the ``analyze`` command to the root app."""
    app.command("analyze")(analyze)
