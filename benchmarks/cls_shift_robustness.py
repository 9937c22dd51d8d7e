"""Image classifiers on off-centre crops: shipped (or candidate) heads on a fresh simulated cohort.

Study analysis classifies each series (sequence, view) on a crop centred where its heart-centre
finder points before anything is segmented. On cines that is the temporal variance; on single
frames (an ED+ES pair) it is a bright-blob search that can land between the ventricles or beside
them, so the heart sits off-centre in the crop. Training crops are centred on the manual labels. This
benchmark measures how much that costs: every image of a simulated cohort no model was trained on
(``sim_seed`` 7 by default; trained heads use seed 0) is classified as prepared and shifted by a few
pixels in a random direction (fixed per image), and the accuracy is tabulated per shift::

    python benchmarks/cls_shift_robustness.py --weights shipped=weights --weights new=DIR --write
"""

from __future__ import annotations

import argparse
import shlex
import sys
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
from results import machine_line, publish, weight_folders
from scipy import ndimage
from torch.utils.data import Dataset

from cmrfm import metrics
from cmrfm.engine.finetune import build_task, load_task_model

ROOT = Path(__file__).resolve().parents[1]
TITLE = "Image classifiers on off-centre crops (benchmarks/cls_shift_robustness.py)"
DEFAULT_TASKS = ("sequence-cls", "view-cls")


def shift_image(image: np.ndarray, pixels: float, angle: float) -> np.ndarray:
    """``(..., H, W)`` image moved by ``pixels`` towards ``angle`` (radians; 0 = +x, pi/2 = +y).

    Linear interpolation; the border is extended (what a crop further into the field of view
    would show is unknown, and a zero border would be a cue of its own).
    """
    offset = (0.0,) * (image.ndim - 2) + (pixels * np.sin(angle), pixels * np.cos(angle))
    return ndimage.shift(np.asarray(image, np.float32), offset, order=1, mode="nearest")


class ShiftedItems(Dataset):
    """A task's evaluation items with every image shifted by ``pixels`` in its own random direction."""

    def __init__(self, items: Sequence[dict[str, Any]], pixels: float, seed: int = 0) -> None:
        self.items = items
        self.pixels = pixels
        self.angles = np.random.default_rng(seed).uniform(0, 2 * np.pi, len(items))

    def __len__(self) -> int:
        return len(self.items)

    def __getitem__(self, index: int) -> dict[str, Any]:
        item = dict(self.items[index])
        if self.pixels:
            moved = shift_image(np.asarray(item["image"]), self.pixels, self.angles[index])
            item["image"] = torch.as_tensor(moved)
        return item


def cohort_items(
    task_id: str, sim_seed: int, sim_subjects: int
) -> tuple[list[dict[str, Any]], tuple[str, ...]]:
    """Every evaluation item of a simulated-only cohort of ``task_id`` (real datasets left out)."""
    task = build_task(task_id, {"real": False, "sim_seed": sim_seed, "sim_subjects": sim_subjects})
    data = task.load_data()
    dataset = data.make_dataset([*data.subjects, *data.train_only], False)
    return [dataset[i] for i in range(len(dataset))], task.info.classes


def score(model: Any, items: Sequence[dict[str, Any]], pixels: float, num_classes: int) -> dict[str, Any]:
    """Accuracy, balanced accuracy and the confusion matrix of ``model`` at one shift."""
    result = model.task.predict_probs(model, ShiftedItems(items, pixels))
    truth, pred = np.asarray(result["labels"]), np.asarray(result["probs"]).argmax(axis=1)
    return {
        "accuracy": metrics.accuracy(truth, pred),
        "balanced": metrics.balanced_accuracy(truth, pred, num_classes),
        "confusion": metrics.confusion_matrix(truth, pred, num_classes),
    }


def worst_confusion(confusion: np.ndarray, classes: Sequence[str]) -> str:
    """The largest off-diagonal cell as ``"true → predicted (count of true)"``."""
    off = confusion.copy()
    np.fill_diagonal(off, 0)
    true, pred = np.unravel_index(int(off.argmax()), off.shape)
    if off[true, pred] == 0:
        return "none"
    return f"{classes[true]} → {classes[pred]} ({off[true, pred]} of {confusion[true].sum()})"


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--weights", action="append", default=[], help="NAME=DIR (repeatable)")
    parser.add_argument("--tasks", default=",".join(DEFAULT_TASKS))
    parser.add_argument("--shifts", default="0,16,24", help="pixels of the 1.5 mm grid")
    parser.add_argument("--sim-seed", type=int, default=7)
    parser.add_argument("--sim-subjects", type=int, default=20)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--write", action="store_true", help="rewrite this section of RESULTS.md")
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)
    folders = weight_folders(args.weights, ROOT / "weights")
    shifts = [float(s) for s in args.shifts.split(",") if s]
    started = time.perf_counter()
    header = "| task | weights | " + " | ".join(f"shift {s:g} px ({1.5 * s:g} mm)" for s in shifts)
    lines = [header + " | largest confusion at the largest shift |", "|---" * (len(shifts) + 3) + "|"]
    for task_id in [t for t in args.tasks.split(",") if t]:
        items, classes = cohort_items(task_id, args.sim_seed, args.sim_subjects)
        for name, folder in folders.items():
            path = folder / f"{task_id}.safetensors"
            if not path.is_file():
                print(f"{name}: no {path.name} in {folder}; skipped")
                continue
            model, _ = load_task_model(path)
            scores = [score(model, items, s, len(classes)) for s in shifts]
            cells = [f"{r['accuracy']:.3f} (bal. {r['balanced']:.3f})" for r in scores]
            row = f"| {task_id} | {name} | " + " | ".join(cells)
            lines.append(row + f" | {worst_confusion(scores[-1]['confusion'], classes)} |")
            print(lines[-1], flush=True)
    given = argv if argv is not None else sys.argv[1:]
    command = "python benchmarks/cls_shift_robustness.py " + shlex.join(given)
    cohort = (
        f"Cohort: {args.sim_subjects} simulated subjects of seed {args.sim_seed} (never trained on), "
        f"every image of every class; accuracy (balanced accuracy) per shift of the prepared crop; "
        f"{time.perf_counter() - started:.0f} s."
    )
    publish(TITLE, [machine_line(command.strip()), cohort, "\n".join(lines)], args.write)


if __name__ == "__main__":
    main()
