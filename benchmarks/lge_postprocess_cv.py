"""Can post-processing lift the ``lge-seg`` infarct Dice? Out-of-fold probabilities, nested selection.

Every EMIDEC case is predicted by the ``benchmarks/tasks_cv.py`` fold model that never saw it, with
the four test-time flips analysis uses. Two post-processing knobs are then searched:

* an offset added to the infarct class's log-probability before the arg-max (positive = more scar;
  the shipped heads already subtract ``log(ce_class_weights)``, the prior correction), and
* removal of scar components (infarct + MVO, per slice) smaller than ``min_px`` pixels, which
  become myocardium, and
* removal of scar components that do not touch the LV blood pool (dilated by one pixel): an
  ischaemic infarct starts at the endocardium, so an island inside the wall is suspect.

A setting picked on the same cases it is scored on is optimistic, so each fold's setting is picked
on the other four folds' cases (nested) and scored on its own. The score is the target's: infarct
Dice of the infarct (``Case_P``) cases; the scar volume ratio (predicted / manual) is shown beside
it, because a bigger infarct class buys Dice with over-read scar.

    python benchmarks/lge_postprocess_cv.py --cv runs/cv/lge-seg --write
"""

from __future__ import annotations

import argparse
import itertools
import platform
import time
from collections import defaultdict
from datetime import UTC, datetime
from pathlib import Path

import numpy as np
from results import update_section
from scipy import ndimage

from cmrfm import metrics
from cmrfm.constants import Label
from cmrfm.engine.finetune import FinetuneConfig, load_task_model, split_subjects
from cmrfm.tasks.lge_seg import LGE_LABELS

INFARCT = LGE_LABELS.index(Label.INFARCT)
MVO = LGE_LABELS.index(Label.MVO)
MYO = LGE_LABELS.index(Label.MYO)
OFFSETS = (-0.5, -0.25, 0.0, 0.25, 0.5, 0.75, 1.0)
MIN_PX = (0, 5, 10, 20)
LV = LGE_LABELS.index(Label.LV)


def out_of_fold(cv_dir: Path, folds: int) -> list[dict]:
    """Per case: ``name``, ``fold``, ``probs`` (Z, C, H, W) float16 and ``ref`` (Z, H, W)."""
    cases = []
    for fold in range(folds):
        path = cv_dir / f"fold{fold}" / "model.safetensors"
        if not path.is_file():
            raise SystemExit(f"{path}: not found (run benchmarks/tasks_cv.py --task lge-seg first)")
        model, card = load_task_model(path)
        task = model.task
        task.config.test_time_flips = True
        data = task.load_data()
        split = FinetuneConfig(task="lge-seg", fold=fold, folds=folds, seed=int(card.get("seed", 0)))
        _, held_out = split_subjects(data, split)
        volumes = defaultdict(list)
        for row in task.predict_masks(model, data.make_dataset(held_out, False), keep_probs=True):
            volumes[row["subject"]].append(row)
        for subject, rows in volumes.items():
            rows.sort(key=lambda r: r["slice"])
            probs = np.stack([r["probs"] for r in rows])  # (Z, C, H, W)
            ref = np.stack([r["ref"] for r in rows])  # (Z, H, W)
            cases.append({"name": subject, "fold": fold, "probs": probs, "ref": ref})
        print(f"fold {fold}: {len(volumes)} cases predicted", flush=True)
    return cases


def post_process(probs: np.ndarray, offset: float, min_px: int, subendocardial: bool = False) -> np.ndarray:
    """``(Z, C, H, W)`` probabilities -> ``(Z, H, W)`` labels after the infarct offset and scar filters."""
    log_probs = np.log(probs.astype(np.float32) + 1e-6)
    log_probs[:, INFARCT] += offset
    labels = log_probs.argmax(axis=1)
    if min_px <= 0 and not subendocardial:
        return labels
    for z in range(labels.shape[0]):
        scar = np.isin(labels[z], (INFARCT, MVO))
        components, count = ndimage.label(scar)
        if not count:
            continue
        ids = np.arange(1, count + 1)
        drop = np.zeros(count, bool)
        if min_px > 0:
            drop |= ndimage.sum(scar, components, ids) < min_px
        if subendocardial:
            near_lv = ndimage.binary_dilation(labels[z] == LV)
            drop |= ndimage.sum(near_lv, components, ids) == 0
        labels[z][np.isin(components, ids[drop])] = MYO
    return labels


def score_cases(cases: list[dict], setting: tuple[float, int, bool]) -> dict[str, list]:
    """Per infarct case: infarct Dice, predicted and manual infarct pixels."""
    out: dict[str, list] = defaultdict(list)
    for case in cases:
        labels = post_process(case["probs"], *setting)
        out["dice"].append(metrics.dice(labels, case["ref"], INFARCT))
        out["pred_px"].append(int((labels == INFARCT).sum()))
        out["ref_px"].append(int((case["ref"] == INFARCT).sum()))
    return {k: np.asarray(v) for k, v in out.items()}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "--cv", type=Path, required=True, help="tasks_cv.py output with fold*/model.safetensors"
    )
    parser.add_argument("--folds", type=int, default=5)
    parser.add_argument("--write", action="store_true", help="write the section into RESULTS.md")
    args = parser.parse_args()
    start = time.perf_counter()
    cases = [c for c in out_of_fold(args.cv, args.folds) if c["name"].startswith("Case_P")]
    grid = list(itertools.product(OFFSETS, MIN_PX, (False, True)))
    scores = {setting: score_cases(cases, setting) for setting in grid}
    folds = np.asarray([c["fold"] for c in cases])

    def mean_dice(setting: tuple[float, int, bool], mask: np.ndarray) -> float:
        return float(scores[setting]["dice"][mask].mean())

    nested_dice = np.zeros(len(cases))
    nested_pred = np.zeros(len(cases))
    picks = []
    for fold in range(args.folds):
        held = folds == fold
        pick = max(grid, key=lambda s: mean_dice(s, ~held))
        picks.append(pick)
        nested_dice[held] = scores[pick]["dice"][held]
        nested_pred[held] = scores[pick]["pred_px"][held]
    ref_px = scores[grid[0]]["ref_px"]
    lines = [
        "| infarct offset | min scar component (px) | subendocardial only | infarct Dice, infarct cases "
        "| predicted / manual infarct volume |",
        "|---|---|---|---|---|",
    ]
    for offset in OFFSETS:
        for min_px, subendo in ((0, False), (10, False), (0, True)):
            s = scores[(offset, min_px, subendo)]
            ratio = s["pred_px"].sum() / s["ref_px"].sum()
            mark = "yes" if subendo else "no"
            lines.append(f"| {offset:+.2f} | {min_px} | {mark} | {s['dice'].mean():.3f} | {ratio:.2f} |")
    base = scores[(0.0, 0, False)]
    picks_text = ", ".join(f"({o:+.2f}, {m}, {'subendocardial' if e else 'any'})" for o, m, e in picks)
    nested_line = (
        f"Nested (each fold's setting picked on the other four folds; picks {picks_text}): "
        f"infarct Dice **{nested_dice.mean():.3f}** "
        f"vs {base['dice'].mean():.3f} without post-processing; predicted / manual infarct volume "
        f"{nested_pred.sum() / ref_px.sum():.2f} vs {base['pred_px'].sum() / base['ref_px'].sum():.2f}."
    )
    elapsed = time.perf_counter() - start
    body = "\n".join(
        [
            f"Machine: {platform.machine()}; date {datetime.now(UTC):%Y-%m-%d}. "
            f"{len(cases)} infarct cases, each by the fold model that never saw it, four test-time "
            f"flips; {elapsed / 60:.0f} min. Command: `python benchmarks/lge_postprocess_cv.py "
            f"--cv {args.cv} --write`.",
            "",
            *lines,
            "",
            nested_line,
        ]
    )
    print(body)
    if args.write:
        update_section("lge-seg: post-processing the infarct class (out-of-fold, nested selection)", body)


if __name__ == "__main__":
    main()
