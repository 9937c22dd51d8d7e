"""How close is simulated cine to real cine? Compares the simulator with ACDC (training set).

Measures, for simulated subjects and ACDC patients alike (ED frames, SAX):
  * blood-to-myocardium contrast ratio (mean LV blood / mean myocardium),
  * normalised intensity histograms in a crop around the heart (intersection, 1-Wasserstein),
  * per-class normalised intensities (LV, MYO, RV, surroundings),
  * LV/RV EDV, EF per group from masks (disc summation), against ACDC's manual labels.
Writes docs/images/simulated_grid.png (simulated images only, committed), the side-by-side
simulated-vs-ACDC figure to outputs/realism/ (git-ignored: real images are never committed), and the
numbers into the "Simulator realism" section of benchmarks/RESULTS.md.

    python benchmarks/realism_vs_acdc.py [--acdc ../shared/data/acdc/training] [--per-group 8]
"""

from __future__ import annotations

import argparse
import sys
from datetime import UTC, datetime
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
from bench_simulator import machine, update_section

from cmrfm.constants import Group, Label, Sequence, View
from cmrfm.simulate.generator import make_config, simulate_study, subject_params
from cmrfm.simulate.groundtruth import ejection_fraction, volumes_from_labels

ROOT = Path(__file__).resolve().parents[1]
DEFAULT_ACDC = ROOT.parent / "shared" / "data" / "acdc" / "training"
GRID_PNG = ROOT / "docs" / "images" / "simulated_grid.png"
COMPARE_PNG = ROOT / "outputs" / "realism" / "sim_vs_acdc.png"
ACDC_TO_INTERNAL = {0: Label.BACKGROUND, 1: Label.RV, 2: Label.MYO, 3: Label.LV}
HIST_BINS = np.linspace(0.0, 1.2, 49)
CROP_MARGIN = 0.5  # crop = label bounding box grown by this fraction on each side
NORM_PERCENTILE = 99.0
GRID_DPI = 56
#: ACDC-like acquisition for the simulated comparison cohort.
SIM_OVERRIDES = [
    "imaging.matrix=[224,224]",
    "imaging.fov_mm=[300,400]",
    "sax.slice_thickness_mm=[5,10]",
    "sax.slice_gap_mm=[0,5]",
    "n_frames=20",
    "views=[sax]",
    "sequences=[cine]",
]


def crop_box(mask: np.ndarray) -> tuple[slice, slice]:
    """A crop around the labelled heart (grown by CROP_MARGIN)."""
    ii, jj = np.nonzero(mask > 0)
    h, w = ii.max() - ii.min() + 1, jj.max() - jj.min() + 1
    i0, i1 = max(0, int(ii.min() - CROP_MARGIN * h)), min(mask.shape[0], int(ii.max() + CROP_MARGIN * h) + 1)
    j0, j1 = max(0, int(jj.min() - CROP_MARGIN * w)), min(mask.shape[1], int(jj.max() + CROP_MARGIN * w) + 1)
    return slice(i0, i1), slice(j0, j1)


def image_stats(image: np.ndarray, labels: np.ndarray) -> dict:
    """Contrast ratio, crop histogram and class intensities of one ED volume (X, Y, Z)."""
    has = [k for k in range(labels.shape[2]) if (labels[:, :, k] == Label.LV).any()]
    mid = has[len(has) // 2]
    box = crop_box(labels[:, :, mid])
    crop = image[box[0], box[1], mid]
    lab = labels[box[0], box[1], mid]
    scale = float(np.percentile(crop, NORM_PERCENTILE)) or 1.0
    norm = crop / scale
    hist = np.histogram(np.clip(norm, 0, HIST_BINS[-1]), HIST_BINS)[0].astype(float)
    blood = image[labels == Label.LV].mean()
    myo = image[labels == Label.MYO].mean()
    classes = {
        name: float(np.median(norm[lab == lid]))
        for name, lid in (("LV", Label.LV), ("MYO", Label.MYO), ("RV", Label.RV), ("other", 0))
        if (lab == lid).any()
    }
    return {"contrast": float(blood / myo), "hist": hist / hist.sum(), "classes": classes, "mid": mid}


def read_acdc(root: Path) -> list[dict]:
    import nibabel as nib

    out = []
    for patient in sorted(root.glob("patient*")):
        info = dict(
            line.split(":", 1) for line in (patient / "Info.cfg").read_text().splitlines() if ":" in line
        )
        group = {"RV": "ARV"}.get(info["Group"].strip(), info["Group"].strip())
        rec = {"id": patient.name, "group": group}
        for phase in ("ED", "ES"):
            frame = int(info[phase])
            img = nib.load(str(patient / f"{patient.name}_frame{frame:02d}.nii.gz"))
            gt = np.asarray(nib.load(str(patient / f"{patient.name}_frame{frame:02d}_gt.nii.gz")).dataobj)
            labels = np.zeros(gt.shape, dtype=np.uint8)
            for src, dst in ACDC_TO_INTERNAL.items():
                labels[gt == src] = dst
            spacing = tuple(float(z) for z in img.header.get_zooms()[:3])
            rec[phase] = {
                "image": np.asarray(img.dataobj, dtype=np.float32),
                "labels": labels,
                "spacing": spacing,
            }
        out.append(rec)
    return out


def simulate(per_group: int, seed: int) -> list[dict]:
    config = make_config(SIM_OVERRIDES)
    out = []
    for g_index, group in enumerate(Group):
        for k in range(per_group):
            s_seed = seed + 1000 * g_index + k
            study = simulate_study(subject_params(s_seed, config, group=group), config, seed=s_seed)
            sax = study.series[0]
            es = study.clinical.es_frame
            rec = {"id": study.study_id, "group": str(group), "truth": study.clinical.extra["truth"]}
            for phase, frame in (("ED", 0), ("ES", es)):
                rec[phase] = {
                    "image": sax.image[..., frame],
                    "labels": sax.labels[frame],
                    "spacing": sax.spacing,
                }
            out.append(rec)
    return out


def volumes(rec: dict) -> dict:
    ed = volumes_from_labels(rec["ED"]["labels"], rec["ED"]["spacing"])
    es = volumes_from_labels(rec["ES"]["labels"], rec["ES"]["spacing"])
    return {
        "lv_edv": ed["lv_ml"],
        "lv_ef": 100 * ejection_fraction(ed["lv_ml"], es["lv_ml"]),
        "rv_edv": ed["rv_ml"],
        "rv_ef": 100 * ejection_fraction(ed["rv_ml"], es["rv_ml"]),
        "mass": ed["lv_mass_g"],
    }


def summary(values: list[float]) -> str:
    q1, med, q3 = np.percentile(values, [25, 50, 75])
    return f"{med:.0f} ({q1:.0f}-{q3:.0f})"


def wasserstein(h1: np.ndarray, h2: np.ndarray) -> float:
    width = HIST_BINS[1] - HIST_BINS[0]
    return float(np.abs(np.cumsum(h1) - np.cumsum(h2)).sum() * width)


def grid_figure(sim_grid_seed: int) -> None:
    """The committed figure: simulated images only, one subject per group."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    config = make_config(
        [
            "imaging.matrix=[192,192]",
            "imaging.fov_mm=[320,320]",
            "n_frames=20",
            "views=[sax,2ch,3ch,4ch]",
            "sequences=[cine,lge,t1map,t2map]",
            "artefact.motion_grade=1",
        ]
    )
    columns = ["SAX ED", "SAX ES", "2CH", "3CH", "4CH", "LGE", "T1 map", "T2 map"]
    fig, axes = plt.subplots(len(Group), len(columns), figsize=(2.0 * len(columns), 2.1 * len(Group)))
    for r, group in enumerate(Group):
        study = simulate_study(
            subject_params(sim_grid_seed + r, config, group=group), config, seed=sim_grid_seed + r
        )
        sax = study.find(Sequence.CINE, View.SAX)[0]
        mid = sax.num_slices // 2
        es = study.clinical.es_frame
        lge = study.find(Sequence.LGE)[0]
        lge_z = int(
            np.argmax([(lge.labels[0][:, :, k] == Label.INFARCT).sum() for k in range(lge.num_slices)])
        )
        if not (lge.labels[0] == Label.INFARCT).any():
            lge_z = mid
        panels = [
            sax.image[:, :, mid, 0],
            sax.image[:, :, mid, es],
            study.find(Sequence.CINE, View.TWO_CH)[0].image[:, :, 0, 0],
            study.find(Sequence.CINE, View.THREE_CH)[0].image[:, :, 0, 0],
            study.find(Sequence.CINE, View.FOUR_CH)[0].image[:, :, 0, 0],
            lge.image[:, :, lge_z, 0],
            study.find(Sequence.T1_MAP)[0].image[:, :, mid, 0],
            study.find(Sequence.T2_MAP)[0].image[:, :, mid, 0],
        ]
        for c, panel in enumerate(panels):
            ax = axes[r, c]
            vmax = {6: 2000, 7: 120}.get(c, float(np.percentile(panel, 99.5)))
            ax.imshow(panel.T, cmap="gray", vmin=0, vmax=vmax)
            ax.set_xticks([])
            ax.set_yticks([])
            if r == 0:
                ax.set_title(columns[c], fontsize=9)
        axes[r, 0].set_ylabel(str(group), fontsize=10)
    fig.suptitle("cmrfm simulator: one simulated subject per group (cine ED/ES, LAX, LGE, maps)", fontsize=10)
    fig.tight_layout()
    GRID_PNG.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(GRID_PNG, dpi=GRID_DPI)
    plt.close(fig)


def compare_figure(acdc: list[dict], sim: list[dict]) -> None:
    """Simulated vs real ACDC crops side by side (written to the git-ignored outputs/ folder)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(2, len(Group), figsize=(2.6 * len(Group), 5.4))
    for c, group in enumerate(Group):
        for r, (name, cohort) in enumerate((("simulated", sim), ("ACDC", acdc))):
            rec = next(x for x in cohort if x["group"] == str(group))
            stats = image_stats(rec["ED"]["image"], rec["ED"]["labels"])
            box = crop_box(rec["ED"]["labels"][:, :, stats["mid"]])
            crop = rec["ED"]["image"][box[0], box[1], stats["mid"]]
            axes[r, c].imshow(crop.T, cmap="gray", vmin=0, vmax=float(np.percentile(crop, 99.5)))
            axes[r, c].set_title(f"{name} {group}", fontsize=9)
            axes[r, c].axis("off")
    fig.tight_layout()
    COMPARE_PNG.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(COMPARE_PNG, dpi=80)
    plt.close(fig)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--acdc", type=Path, default=DEFAULT_ACDC)
    parser.add_argument("--per-group", type=int, default=8)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--no-write", action="store_true")
    args = parser.parse_args()
    if not args.acdc.is_dir():
        raise SystemExit(f"ACDC not found at {args.acdc}; give --acdc")
    acdc = read_acdc(args.acdc)
    sim = simulate(args.per_group, args.seed)
    stats = {
        name: [image_stats(r["ED"]["image"], r["ED"]["labels"]) for r in cohort]
        for name, cohort in (("sim", sim), ("acdc", acdc))
    }
    mean_hist = {k: np.mean([s["hist"] for s in v], axis=0) for k, v in stats.items()}
    intersection = float(np.minimum(mean_hist["sim"], mean_hist["acdc"]).sum())
    lines = [
        f"Machine: {machine()}. Date: {datetime.now(UTC):%Y-%m-%d %H:%M} UTC. "
        f"Command: `python benchmarks/realism_vs_acdc.py --per-group {args.per_group}`.",
        f"Simulated: {len(sim)} subjects ({args.per_group} per group, SAX cine, ACDC-like 5-10 mm slices, "
        f"1.3-1.8 mm pixels); ACDC: {len(acdc)} patients (ED/ES with manual labels). Masks → volumes by disc "
        "summation for both.",
        "",
        "| measure (ED, mid-ventricular slice) | simulated median (IQR) | ACDC median (IQR) |",
        "|---|---|---|",
    ]
    for key, label in (("contrast", "blood / myocardium mean intensity"),):
        a = [s[key] for s in stats["sim"]]
        b = [s[key] for s in stats["acdc"]]
        lines.append(
            f"| {label} | {np.median(a):.2f} ({np.percentile(a, 25):.2f}-{np.percentile(a, 75):.2f}) | "
            f"{np.median(b):.2f} ({np.percentile(b, 25):.2f}-{np.percentile(b, 75):.2f}) |"
        )
    for cls in ("LV", "MYO", "RV", "other"):
        a = [s["classes"][cls] for s in stats["sim"] if cls in s["classes"]]
        b = [s["classes"][cls] for s in stats["acdc"] if cls in s["classes"]]
        lines.append(
            f"| normalised intensity, {cls} (crop p{NORM_PERCENTILE:.0f} = 1) | {np.median(a):.2f} | "
            f"{np.median(b):.2f} |"
        )
    lines += [
        "",
        f"Mean normalised-intensity histograms of the heart crops: intersection {intersection:.2f} "
        f"(1 = identical), 1-Wasserstein distance {wasserstein(mean_hist['sim'], mean_hist['acdc']):.3f} "
        "(in units of the p99 intensity).",
        "",
        "| group | source | LV EDV mL | LV EF % | RV EDV mL | RV EF % | LV mass g |",
        "|---|---|---|---|---|---|---|",
    ]
    for group in Group:
        for name, cohort in (("simulated", sim), ("ACDC", acdc)):
            vols = [volumes(r) for r in cohort if r["group"] == str(group)]
            cells = " | ".join(
                summary([v[k] for v in vols]) for k in ("lv_edv", "lv_ef", "rv_edv", "rv_ef", "mass")
            )
            lines.append(f"| {group} | {name} | {cells} |")
    errors = [abs(r["truth"]["lv_ef_mask"] - r["truth"]["lv_ef"]) * 100 for r in sim]
    lines += [
        "",
        f"Simulated mask-based LV EF vs analytic EF: median absolute difference {np.median(errors):.1f} "
        f"points (max {np.max(errors):.1f}); the difference is the disc-summation error of thick slices.",
        "",
        "Where it still differs (see also the side-by-side figure the script writes to outputs/realism/):",
        "- Real blood pools are darker towards the RV and mottled by trabeculae and flow; the simulator",
        "  uses a calibrated flow factor and a smooth synthetic texture, so its blood is more uniform",
        "  and brighter.",
        "- The phantom is piecewise smooth: no trabeculae, valves, coronary vessels, bowel or realistic lung",
        "  vessels; edges are sharper than in real images apart from partial volume.",
        "- Group volumes follow literature/ACDC definitions, not ACDC's exact distributions: check the table",
        "  (e.g. HCM LV mass and RV volumes of non-ARV groups).",
        "- Histogram overlap is limited by the surroundings (mediastinum, lungs, liver) being simple shapes.",
        "",
        "![simulated grid](../docs/images/simulated_grid.png)",
    ]
    grid_figure(args.seed + 77)
    compare_figure(acdc, sim)
    body = "\n".join(lines)
    print(body)
    print(f"figures: {GRID_PNG} (committed), {COMPARE_PNG} (git-ignored, shows real ACDC images)")
    if not args.no_write:
        update_section("Simulator realism vs ACDC (benchmarks/realism_vs_acdc.py)", body)


if __name__ == "__main__":
    main()
