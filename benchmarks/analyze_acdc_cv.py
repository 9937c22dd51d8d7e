"""Accuracy of ``cmrfm analyze`` on ACDC in cross-validation: every patient by a model that never saw it.

For each ACDC patient, the fold model whose held-out part holds that patient
(``<cv>/fold{k}.safetensors``, default ``weights/cv/sax-seg``) analyses a copy of the patient's
*image* files (no labels, no Info.cfg), exactly as a user would run ``cmrfm analyze``. The
predicted masks written in the input geometry are then compared with the manual labels:

* Dice per structure (LV, MYO, RV) at ED and ES (the true phases from Info.cfg);
* LVEF and RVEF absolute error; LVEDV, LVESV and LV mass error (signed and absolute); whether the
  analysis picked the right ED/ES frame;
* a Bland–Altman plot (LVEF, RVEF, LVEDV, LV mass).

Which patients each fold held out is read from ``<cv>/splits.json``
(``{"k": K, "seed": S, "folds": [{"fold": 0, "train": [...], "val": [...]}, ...]}``) or, failing
that, from each fold card's ``eval_subject_ids``. ``--write-splits K`` writes the split that
``cmrfm finetune --task sax-seg folds=K fold=f`` trains on (the same function computes both).
Folds without weights are skipped with a message. Each patient's result is kept in
``<out>/patients/<id>.json`` with the digest of the fold model and the analysis options that made
it; a rerun reuses the results whose model and options are unchanged, so the folds of a
cross-validation can be analysed as they finish.

Besides the accuracy numbers it writes ``predicted_features.csv``: the disease classifier's shape
and function features of every patient's out-of-fold predicted masks, for training ``disease-cls``
on what analysis will feed it (``task_options.features=file``).

Usage: ``python benchmarks/analyze_acdc_cv.py [--cv DIR] [--acdc ROOT] [--patients N] [--out DIR]
[--write]``; ``--write`` rewrites its section of ``benchmarks/RESULTS.md``.
"""

from __future__ import annotations

import argparse
import csv
import datetime as dt
import hashlib
import json
import platform
import re
import shutil
import tempfile
from collections.abc import Iterable
from pathlib import Path
from typing import Any

import numpy as np
from results import replace_section

from cmrfm.clinical.analyze import AnalyzeOptions, analyze_path
from cmrfm.clinical.bundle import ModelBundle
from cmrfm.clinical.features import FEATURE_NAMES
from cmrfm.clinical.function import slice_spacing_mm, ventricular_function
from cmrfm.clinical.geometry import insertion_points_distance, rv_insertion_points
from cmrfm.constants import Label
from cmrfm.data.adapters.acdc import INFO_FILE, AcdcAdapter, read_info
from cmrfm.errors import InputError
from cmrfm.io.nifti import read_nifti

ROOT = Path(__file__).resolve().parents[1]
DEFAULT_CV = ROOT / "weights" / "cv" / "sax-seg"
RESULTS = Path(__file__).with_name("RESULTS.md")
HEADING = "## ACDC cross-validated analysis accuracy (benchmarks/analyze_acdc_cv.py)"
STRUCTURES = {"LV": Label.LV, "MYO": Label.MYO, "RV": Label.RV}
SPLITS_FILE = "splits.json"
#: Out-of-fold predicted-mask features for disease-cls training (in ``--out``).
FEATURES_FILE = "predicted_features.csv"


def dice(pred: np.ndarray, ref: np.ndarray) -> float:
    """Dice of two boolean masks (1.0 when both are empty)."""
    total = pred.sum() + ref.sum()
    return 1.0 if total == 0 else float(2 * (pred & ref).sum() / total)


def list_patients(acdc: Path) -> list[tuple[str, str]]:
    """``(patient id, group)`` of every ACDC patient folder, sorted by id."""
    out = []
    for folder in AcdcAdapter.list_studies(acdc):
        info = read_info(folder / INFO_FILE)
        out.append((folder.name, info.get("Group", "").strip()))
    return sorted(out)


def write_splits(acdc: Path, cv: Path, k: int, seed: int) -> Path:
    """Writes the patient-level split the CV fold models are trained on.

    The split is computed exactly as ``cmrfm finetune --task sax-seg folds=K seed=S`` computes it
    (same subject order and strata, through :func:`cmrfm.engine.finetune.split_subjects`), so fold
    ``f``'s held-out patients here are the ones ``fold=f`` never trained on.
    """
    from cmrfm.engine.finetune import FinetuneConfig, build_task, split_subjects

    task_data = build_task("sax-seg", {"root": str(acdc)}).load_data()
    configs = [FinetuneConfig(task="sax-seg", folds=k, fold=f, seed=seed) for f in range(k)]
    splits = [split_subjects(task_data, cfg) for cfg in configs]
    cv.mkdir(parents=True, exist_ok=True)
    data = {
        "k": k,
        "seed": seed,
        "folds": [{"fold": f, "train": sorted(tr), "val": sorted(va)} for f, (tr, va) in enumerate(splits)],
    }
    path = cv / SPLITS_FILE
    path.write_text(json.dumps(data, indent=1) + "\n")
    return path


def held_out_fold(cv: Path) -> dict[str, int]:
    """Patient id -> the fold that held it out, from splits.json or the fold cards."""
    path = cv / SPLITS_FILE
    if path.is_file():
        data = json.loads(path.read_text())
        return {p: int(f["fold"]) for f in data["folds"] for p in f["val"]}
    from cmrfm.engine.checkpoint import load_weights

    out: dict[str, int] = {}
    for weights in sorted(cv.glob("fold*.safetensors")):
        _, card = load_weights(weights)
        for patient in card.get("eval_subject_ids") or []:
            out[patient] = int(card.get("fold", weights.stem.removeprefix("fold")))
    if not out:
        raise InputError(cv, f"no {SPLITS_FILE} and no eval_subject_ids in the fold cards")
    return out


def fold_cards(cv: Path, folds: Iterable[int]) -> dict[int, dict[str, Any]]:
    """The model card of each fold model (its budget, for the RESULTS.md section)."""
    from cmrfm.engine.checkpoint import load_weights

    return {f: load_weights(cv / f"fold{f}.safetensors")[1] for f in sorted(folds)}


def _copy_images(src: Path, dst: Path) -> None:
    dst.mkdir(parents=True)
    for path in src.glob("*.nii*"):
        if "_gt" not in path.name:
            shutil.copy(path, dst / path.name)


def evaluate_patient(patient_dir: Path, bundle: ModelBundle, work: Path) -> dict[str, Any]:
    """Analyses one patient's images and compares with its manual labels."""
    reference = AcdcAdapter.load_study(patient_dir, with_labels=True)
    series = reference.series[0]
    info = read_info(patient_dir / INFO_FILE)
    ed_no, es_no = int(info["ED"]), int(info["ES"])
    frames = series.metadata["source_frames"]
    ref = {"ED": series.labels[frames.index(ed_no)], "ES": series.labels[frames.index(es_no)]}
    inputs = work / "in" / patient_dir.name
    _copy_images(patient_dir, inputs)
    folder, m = analyze_path(inputs, bundle, work / "out", AnalyzeOptions(report=False))
    pred = {}
    for phase, number in (("ED", ed_no), ("ES", es_no)):
        seg = folder / "seg" / f"{patient_dir.name}_frame{number:02d}_seg.nii.gz"
        pred[phase] = read_nifti(seg).image[..., 0].astype(np.uint8)  # (X, Y, Z)
    sx, sy, sz = series.spacing
    dz = slice_spacing_mm(series.positions(), sz)
    truth = ventricular_function(ref["ED"], ref["ES"], sx * sy, dz)
    mine = ventricular_function(pred["ED"], pred["ES"], sx * sy, dz)
    row: dict[str, Any] = {"patient": patient_dir.name, "group": info.get("Group", "").strip()}
    for phase in ("ED", "ES"):
        for name, label in STRUCTURES.items():
            row[f"dice_{name}_{phase}"] = dice(pred[phase] == label, ref[phase] == label)
    for key in ("lv_ef_pct", "rv_ef_pct", "lv_edv_ml", "lv_esv_ml", "lv_mass_g", "rv_edv_ml"):
        row[f"{key}_ref"] = getattr(truth, key)
        row[f"{key}_pred"] = getattr(mine, key)
        row[f"{key}_err"] = getattr(mine, key) - getattr(truth, key)
    # The analysis's own ED/ES choice, as ACDC frame numbers.
    row["ed_es_correct"] = analysis_frame_number(m, "ed", ed_no, es_no) == ed_no and (
        analysis_frame_number(m, "es", ed_no, es_no) == es_no
    )
    marks = m.get("landmarks") or {}
    frame_no = analysis_frame_number(m, marks["frame"], ed_no, es_no) if marks.get("available") else None
    if frame_no in (ed_no, es_no):
        reference_mask = ref["ED"] if frame_no == ed_no else ref["ES"]
        row["rv_insertion_error_mm"] = rv_insertion_error_mm(marks, reference_mask, sx, sy)
    else:
        row["rv_insertion_error_mm"] = float("nan")
    row["analysis_lv_ef_pct"] = m.get("lv_ef_pct")
    row["shape_features"] = m.get("shape_features")
    ood = m.get("ood") or {}
    row["ood_flag"] = ood.get("flag")
    row["ood_threshold_source"] = ood.get("threshold_source")
    row["mean_entropy"] = ood.get("mean_entropy")
    shutil.rmtree(folder)
    return row


def bland_altman(rows: list[dict[str, Any]], path: Path) -> Path:
    """Bland–Altman panels (mean vs difference, bias and 95 % limits) for four measurements."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    panels = (
        ("lv_ef_pct", "LVEF (%)"),
        ("rv_ef_pct", "RVEF (%)"),
        ("lv_edv_ml", "LVEDV (mL)"),
        ("lv_mass_g", "LV mass (g)"),
    )
    fig, axes = plt.subplots(2, 2, figsize=(9, 7), dpi=100)
    for ax, (key, title) in zip(axes.ravel(), panels, strict=True):
        ref = np.array([r[f"{key}_ref"] for r in rows], float)
        pred = np.array([r[f"{key}_pred"] for r in rows], float)
        ok = np.isfinite(ref) & np.isfinite(pred)
        mean, diff = (ref[ok] + pred[ok]) / 2, pred[ok] - ref[ok]
        ax.scatter(mean, diff, s=12)
        if diff.size:
            bias, sd = diff.mean(), diff.std(ddof=1) if diff.size > 1 else 0.0
            for value, style in ((bias, "-"), (bias + 1.96 * sd, "--"), (bias - 1.96 * sd, "--")):
                ax.axhline(value, color="grey", linestyle=style)
        ax.set_title(title)
        ax.set_xlabel("mean of manual and cmrfm")
        ax.set_ylabel("cmrfm − manual")
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)
    return path


def analysis_frame_number(m: dict[str, Any], which: str | int, ed_no: int, es_no: int) -> int | None:
    """The ACDC frame number (1-based) of an analysis frame: ``"ed"``, ``"es"`` or a cine index.

    The analysis works on the ED/ES frame files as a two-frame pseudo-cine (index 0/1 = the files in
    name order), or on a patient's 4D cine when one sits in the folder (index + 1).
    """
    index = m.get(f"{which}_frame") if isinstance(which, str) else which
    if index is None:
        return None
    if isinstance(which, str) and m.get(f"{which}_input"):
        found = re.search(r"_frame(\d+)$", str(m[f"{which}_input"]))
        if found:
            return int(found.group(1))
    if str(m.get("cine_series", "")).endswith("_4d"):
        return int(index) + 1
    order = sorted((ed_no, es_no))
    return order[int(index)] if 0 <= int(index) < len(order) else None


def rv_insertion_error_mm(
    landmarks: dict[str, Any], reference_mask: np.ndarray, sx: float, sy: float
) -> float:
    """Mean distance (mm) of the analysis' two RV insertion points to those of the manual labels.

    ``reference_mask`` is the manual ``(X, Y, Z)`` mask of the frame the analysis took them from;
    its points are read off the same slice with the same
    :func:`~cmrfm.clinical.geometry.rv_insertion_points` and matched to the analysis' in the better
    of the two pairings. NaN when either side has no clear RV-LV junction there.
    """
    if not landmarks.get("available"):
        return float("nan")
    points = np.asarray(landmarks["rv_insertion_points_px"], float)  # (2, 2) (x, y) source px
    reference = rv_insertion_points(reference_mask[..., int(landmarks["slice"])].T)
    if reference is None:
        return float("nan")
    return insertion_points_distance(points, reference, (sx, sy))


def write_feature_table(features: dict[str, dict[str, float] | None], path: Path) -> Path:
    """The disease classifier's features of each patient's out-of-fold predicted masks, as a CSV.

    ``cmrfm finetune --task disease-cls task_options.features=file task_options.features_file=PATH``
    trains on them, so the classifier meets at training time the segmentation errors that study
    analysis will feed it.
    """
    with path.open("w", newline="") as handle:
        writer = csv.writer(handle)
        writer.writerow(["subject", *FEATURE_NAMES])
        for patient, values in sorted(features.items()):
            if values:
                writer.writerow([patient, *[values[name] for name in FEATURE_NAMES]])
    return path


def summarise(rows: list[dict[str, Any]]) -> dict[str, float]:
    """Means of Dice, MAE of EF, mean/MAE of volume and mass errors."""
    out: dict[str, float] = {"patients": float(len(rows))}
    for key in rows[0]:
        if key.startswith("dice_"):
            out[key] = float(np.nanmean([r[key] for r in rows]))
    out["dice_mean"] = float(np.nanmean([v for k, v in out.items() if k.startswith("dice_")]))
    for key in ("lv_ef_pct", "rv_ef_pct", "lv_edv_ml", "lv_esv_ml", "lv_mass_g", "rv_edv_ml"):
        errors = np.array([r[f"{key}_err"] for r in rows], float)
        out[f"{key}_mae"] = float(np.nanmean(np.abs(errors)))
        out[f"{key}_bias"] = float(np.nanmean(errors))
    out["ed_es_correct_pct"] = 100.0 * float(np.mean([r["ed_es_correct"] for r in rows]))
    rv_points = np.array([r.get("rv_insertion_error_mm", np.nan) for r in rows], float)
    if np.isfinite(rv_points).any():
        out["rv_insertion_error_mm_mean"] = float(np.nanmean(rv_points))
        out["rv_insertion_error_mm_median"] = float(np.nanmedian(rv_points))
        out["rv_insertion_measured"] = float(np.isfinite(rv_points).sum())
    entropy = np.array([r.get("mean_entropy") for r in rows], float)
    if np.isfinite(entropy).any():
        for name, fn in (("min", np.nanmin), ("median", np.nanmedian), ("max", np.nanmax)):
            out[f"mean_entropy_{name}"] = float(fn(entropy))
    return out


def run(
    cv: Path, acdc: Path, out: Path, patients: int, write: bool, tta: bool = False, jitter: bool = True
) -> dict[str, float]:
    """Evaluates every held-out patient (the first ``patients`` when > 0); writes CSV, JSON, plot.

    ``tta`` analyses with test-time flips (``cmrfm analyze --tta``); ``jitter=False`` with one
    segmentation pass (``--no-jitter``).
    """
    folds = held_out_fold(cv)
    present = {int(w.stem.removeprefix("fold")) for w in cv.glob("fold*.safetensors")}
    missing = sorted(set(folds.values()) - present)
    if missing:
        print(f"fold models missing for folds {missing}: their patients are skipped")
    ids = [p for p, _ in list_patients(acdc) if folds.get(p) in present]
    if patients > 0:
        ids = ids[:patients]
    if not ids:
        raise InputError(acdc, "no ACDC patient is held out by any fold")
    out.mkdir(parents=True, exist_ok=True)
    bundles: dict[int, ModelBundle] = {}
    keys: dict[int, dict[str, Any]] = {}
    rows = []
    reused = 0
    with tempfile.TemporaryDirectory(prefix="cmrfm-acdc-cv-") as tmp:
        for n, patient in enumerate(ids):
            fold = folds[patient]
            if fold not in keys:
                keys[fold] = {
                    "weights_sha256": _digest(cv / f"fold{fold}.safetensors"),
                    "tta": tta,
                    "jitter": jitter,
                }
            row = _cached_row(out, patient, keys[fold])
            if row is None:
                if fold not in bundles:
                    bundles[fold] = ModelBundle.from_files(
                        {"sax-seg": cv / f"fold{fold}.safetensors"}, tta=tta, jitter=jitter
                    )
                row = {"fold": fold, **evaluate_patient(acdc / patient, bundles[fold], Path(tmp) / str(n))}
                _store_row(out, patient, keys[fold], row)
            else:
                reused += 1
            rows.append(row)
    if reused:
        print(f"reused {reused} patients' results from {out / 'patients'} (same fold model and options)")
    features = {r["patient"]: r.pop("shape_features") for r in rows}
    with (out / "per_patient.csv").open("w", newline="") as handle:
        writer = csv.DictWriter(handle, fieldnames=list(rows[0]))
        writer.writeheader()
        writer.writerows(rows)
    write_feature_table(features, out / FEATURES_FILE)
    summary = summarise(rows)
    (out / "summary.json").write_text(json.dumps(summary, indent=2) + "\n")
    plot = bland_altman(rows, out / "bland_altman.png")
    cards = fold_cards(cv, keys)
    flags = (" --tta" if tta else "") + ("" if jitter else " --no-jitter")
    section = _section(summary, cards, cv, len(ids), flags)
    print(section)
    if write:
        _write_section(section, plot)
    return summary


def _digest(path: Path) -> str:
    """SHA-256 of a weights file (which model made a cached result)."""
    sha = hashlib.sha256()
    with path.open("rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            sha.update(block)
    return sha.hexdigest()


def _cached_row(out: Path, patient: str, key: dict[str, Any]) -> dict[str, Any] | None:
    """A patient's earlier result when it was made by the same model with the same options."""
    path = out / "patients" / f"{patient}.json"
    if not path.is_file():
        return None
    try:
        stored = json.loads(path.read_text())
    except (OSError, json.JSONDecodeError):
        return None
    return stored["row"] if stored.get("key") == key else None


def _store_row(out: Path, patient: str, key: dict[str, Any], row: dict[str, Any]) -> None:
    """Keeps a patient's result (with what made it) for reruns; written whole or not at all."""
    folder = out / "patients"
    folder.mkdir(parents=True, exist_ok=True)
    partial = folder / f".{patient}.json.part"
    partial.write_text(json.dumps({"key": key, "row": row}, default=_json_default))
    partial.replace(folder / f"{patient}.json")


def _json_default(value: Any) -> Any:
    if isinstance(value, np.generic):
        return value.item()
    if isinstance(value, np.ndarray):
        return value.tolist()
    raise TypeError(f"not JSON serialisable: {type(value).__name__}")


def rewrite_from(out: Path, cv: Path) -> str:
    """Re-renders the RESULTS.md section from an earlier run's ``out`` folder (no re-analysis)."""
    summary = json.loads((out / "summary.json").read_text())
    with (out / "per_patient.csv").open() as handle:
        folds = sorted({int(r["fold"]) for r in csv.DictReader(handle)})
    cards = fold_cards(cv, folds)
    section = _section(summary, cards, cv, int(summary["patients"]))
    print(section)
    _write_section(section, out / "bland_altman.png")
    return section


def _section(summary: dict[str, float], cards: dict[int, dict], cv: Path, n: int, flags: str = "") -> str:
    now = dt.datetime.now(dt.UTC).strftime("%Y-%m-%d %H:%M UTC")
    trained = all(c.get("steps") for c in cards.values())
    shown = cv.relative_to(ROOT) if cv.is_relative_to(ROOT) else cv
    lines = [
        HEADING,
        "",
        f"Machine: {platform.node() or 'unknown'}, {platform.machine()}. Date: {now}. "
        f"Command: `python benchmarks/analyze_acdc_cv.py --cv {shown}{flags} --write`. "
        f"{n} patients, folds {sorted(cards)}; each patient analysed by the fold model that held it out"
        + ("" if trained else " (**untrained weights: numbers are meaningless**)")
        + ".",
        "",
        "| structure | Dice ED | Dice ES |",
        "|---|---|---|",
    ]
    for name in STRUCTURES:
        lines.append(f"| {name} | {summary[f'dice_{name}_ED']:.3f} | {summary[f'dice_{name}_ES']:.3f} |")
    lines += [
        "",
        f"Mean Dice {summary['dice_mean']:.3f} (target ≥ 0.90). "
        f"LVEF MAE {summary['lv_ef_pct_mae']:.1f} points (target ≤ 5), "
        f"RVEF MAE {summary['rv_ef_pct_mae']:.1f}; "
        f"LVEDV error {summary['lv_edv_ml_bias']:+.1f} mL (MAE {summary['lv_edv_ml_mae']:.1f}), "
        f"LVESV {summary['lv_esv_ml_bias']:+.1f} (MAE {summary['lv_esv_ml_mae']:.1f}), "
        f"LV mass {summary['lv_mass_g_bias']:+.1f} g (MAE {summary['lv_mass_g_mae']:.1f}); "
        f"ED/ES chosen correctly in {summary['ed_es_correct_pct']:.0f} %."
        + (
            f" RV insertion points (read off the predicted ED mask at the mid-ventricular slice) lie "
            f"{summary['rv_insertion_error_mm_mean']:.1f} mm on average (median "
            f"{summary['rv_insertion_error_mm_median']:.1f}) from those of the manual labels "
            f"({summary['rv_insertion_measured']:.0f} patients with a clear junction on both)."
            if "rv_insertion_error_mm_mean" in summary
            else ""
        )
        + (
            f" Mean predictive entropy over the heart (the OOD statistic) on these in-distribution "
            f"studies: {summary['mean_entropy_min']:.3f}-{summary['mean_entropy_max']:.3f} "
            f"(median {summary['mean_entropy_median']:.3f})."
            if "mean_entropy_max" in summary
            else ""
        ),
        "",
        "![Bland-Altman](images/acdc_cv_bland_altman.png)",
        "",
    ]
    return "\n".join(lines)


def _write_section(section: str, plot: Path) -> None:
    images = RESULTS.parent / "images"
    images.mkdir(exist_ok=True)
    shutil.copy(plot, images / "acdc_cv_bland_altman.png")
    replace_section(HEADING, section)


def main(argv: list[str] | None = None) -> dict[str, float] | None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--cv", type=Path, default=DEFAULT_CV, help="folder of fold{k}.safetensors")
    parser.add_argument("--acdc", type=Path, default=None, help="ACDC training folder")
    parser.add_argument("--out", type=Path, default=Path("runs/analyze_acdc_cv"))
    parser.add_argument("--patients", type=int, default=0, help="first N held-out patients (0 = all)")
    parser.add_argument("--write", action="store_true", help="rewrite this section of RESULTS.md")
    parser.add_argument("--write-splits", type=int, default=0, metavar="K", help="write a K-fold splits.json")
    parser.add_argument("--seed", type=int, default=0, help="split seed for --write-splits")
    parser.add_argument("--tta", action="store_true", help="analyse with test-time flips")
    parser.add_argument("--no-jitter", action="store_true", help="one segmentation pass, no half-patch shift")
    parser.add_argument(
        "--rewrite-from", type=Path, default=None, help="re-render RESULTS.md from an earlier --out folder"
    )
    args = parser.parse_args(argv)
    from cmrfm.tasks.sources import resolve_root

    acdc = args.acdc or resolve_root("acdc", None)
    if args.rewrite_from is not None:
        rewrite_from(args.rewrite_from, args.cv)
        return None
    if args.write_splits:
        print(f"wrote {write_splits(acdc, args.cv, args.write_splits, args.seed)}")
        return None
    if not any(args.cv.glob("fold*.safetensors")):
        raise SystemExit(f"no fold models in {args.cv}: train them first (see docstring); awaiting weights")
    return run(args.cv, acdc, args.out, args.patients, args.write, tta=args.tta, jitter=not args.no_jitter)


if __name__ == "__main__":
    main()
