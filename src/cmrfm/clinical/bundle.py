"""The models a study analysis uses: whatever fine-tuned task weights a folder holds.

A weights folder holds ``<task-id>.safetensors`` files written by
:func:`cmrfm.engine.finetune.export_model` (each with its JSON model card). :meth:`ModelBundle.load`
loads the ones present; a missing task is simply absent (:meth:`ModelBundle.has` is False) and the
analysis skips that step with a warning, never inventing a number. A file that exists but cannot be
loaded is recorded in :attr:`ModelBundle.errors` and treated as missing.

Inference runs on preprocessed slices (:mod:`cmrfm.data.preprocess`) in batches, under bf16
autocast where it helps (as in fine-tuning), with optional test-time augmentation (flips).
"""

from __future__ import annotations

import os
import time
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F

from cmrfm.data.preprocess import PreprocessConfig
from cmrfm.errors import CmrfmError, InputError
from cmrfm.metrics import normalised_entropy
from cmrfm.models.heads import per_level_uncertainty
from cmrfm.tasks.context import stack_with_neighbours
from cmrfm.tasks.heartzoom import refine_with_zoom
from cmrfm.tasks.kinds import TTA_FLIPS
from cmrfm.tasks.kinds import TestTimeView as View

#: Every task an analysis may use, in the order they run.
ANALYSIS_TASKS: tuple[str, ...] = (
    "sequence-cls",
    "view-cls",
    "quality-cls",
    "sax-seg",
    "lax-seg",
    "lge-seg",
    "mapping-seg",
    "landmarks",
    "disease-cls",
    "lge-infarct",
)
#: Environment variable naming the default weights folder.
WEIGHTS_ENV = "CMRFM_WEIGHTS"
#: Slices per forward pass.
DEFAULT_BATCH_SIZE = 32
#: Largest side at which the decoder-level variance is computed (then upsampled).
UNCERTAINTY_SIZE = 64
#: Patch size assumed for the jitter pass of a model whose card names none (CNN baselines).
DEFAULT_JITTER_PATCH = 8


def segmentation_views(tta: bool, jitter: bool, patch: int) -> list[View]:
    """The passes of one segmentation: identity, flips with ``tta``, a half-patch shift with ``jitter``.

    A ViT sees the image through a fixed grid of ``patch``-px tokens, so a structure on the edge of
    a decision can come out differently when the heart sits half a patch further: averaging the
    plain pass with one shifted by half a patch in both axes reduces that grid dependence (on ACDC
    fold 0 it took the analysis Dice from 0.894 to 0.902 and the LVEF error from 3.2 to 2.2 points;
    three flips of ``tta`` gave 0.901 and 2.6; benchmarks/RESULTS.md).
    """
    views = [View()]
    if tta:
        views += [View(flip=dims) for dims in TTA_FLIPS[1:]]
    if jitter:
        views.append(View(shift=max(1, patch // 2)))
    return views


def default_weights_dir() -> Path:
    """``$CMRFM_WEIGHTS``, else the ``weights/`` folder shipped at the repository root."""
    if os.environ.get(WEIGHTS_ENV):
        return Path(os.environ[WEIGHTS_ENV])
    return Path(__file__).resolve().parents[3] / "weights"


@dataclass
class LoadedTask:
    """One loaded task model and what inference needs to know about it.

    Attributes:
        task_id: Registry id.
        model: The :class:`~cmrfm.tasks.base.TaskModel` in eval mode.
        card: Its model card.
        path: The weights file.
        classes: Output class names (channel order).
        preprocess: Preprocessing its inputs need (grid size from the architecture; the card's
            ``preprocess`` entry, when present, overrides fields).
    """

    task_id: str
    model: Any
    card: dict[str, Any]
    path: Path
    classes: tuple[str, ...]
    preprocess: PreprocessConfig

    @property
    def trained(self) -> bool:
        """Whether the weights were fitted: gradient steps, or an exact fit of the head (``solver``)."""
        return bool(self.card.get("steps")) or bool(self.card.get("solver"))

    def version(self) -> dict[str, Any]:
        """What ``measurements.json`` records about these weights."""
        card = self.card
        return {
            "file": self.path.name,
            "cmrfm_version": card.get("cmrfm_version"),
            "version": card.get("version"),
            "init": card.get("init"),
            "data": card.get("data"),
            "steps": card.get("steps"),
            "fold": card.get("fold"),
            "trained": self.trained,
        }


@dataclass
class SegPrediction:
    """Segmentation outputs on the model grid.

    Attributes:
        probs: ``(N, C, H, W)`` class probabilities (mean over TTA when used).
        level_variance: ``(N, C, H, W)`` variance of class probabilities across decoder levels.
        tta_variance: ``(N, C, H, W)`` variance across the test-time views (flips, jitter), or
            ``None`` with a single pass.
        identity_entropy: ``(N, H, W)`` normalised entropy of the plain pass alone, kept with
            several views (``None`` without: then it is :meth:`entropy` itself).
    """

    probs: np.ndarray
    level_variance: np.ndarray
    tta_variance: np.ndarray | None = None
    identity_entropy: np.ndarray | None = None

    @property
    def labels(self) -> np.ndarray:
        """``(N, H, W)`` arg-max class indices."""
        return self.probs.argmax(axis=1).astype(np.uint8)

    def entropy(self) -> np.ndarray:
        """``(N, H, W)`` predictive entropy normalised to [0, 1] by ``log C``."""
        return normalised_entropy(self.probs, axis=1)

    def ood_entropy(self) -> np.ndarray:
        """``(N, H, W)`` entropy of the plain (un-augmented) prediction.

        The OOD statistic: model cards calibrate their threshold on plain predictions, and the
        mean over test-time views is more uncertain by construction, so views must not raise the flag.
        """
        return self.identity_entropy if self.identity_entropy is not None else self.entropy()


@dataclass
class ModelBundle:
    """The task models available to an analysis.

    Attributes:
        folder: Where the weights were looked for.
        models: Task id -> loaded model.
        errors: Task id -> why its weights file could not be used.
        amp: ``auto``, ``bf16`` or ``off`` (as in fine-tuning).
        tta: Test-time flips for every segmentation (:data:`~cmrfm.tasks.kinds.TTA_FLIPS`: 4 passes
            instead of 1); tasks whose ``analysis_flips`` is set (``lge-seg``) always use them.
        jitter: One more segmentation pass shifted by half a ViT patch, averaged with the plain one
            (:func:`segmentation_views`).
        batch_size: Slices per forward pass.
        load_seconds: Time spent loading.
    """

    folder: Path
    models: dict[str, LoadedTask] = field(default_factory=dict)
    errors: dict[str, str] = field(default_factory=dict)
    amp: str = "auto"
    tta: bool = False
    jitter: bool = True
    batch_size: int = DEFAULT_BATCH_SIZE
    load_seconds: float = 0.0

    @classmethod
    def from_files(
        cls, files: dict[str, str | Path], amp: str = "auto", tta: bool = False, jitter: bool = True
    ) -> ModelBundle:
        """A bundle of explicit files (task id -> weights file), e.g. one cross-validation fold's model.

        Raises:
            InputError: When a file cannot be loaded or holds another task.
        """
        from cmrfm.engine.finetune import load_task_model

        started = time.perf_counter()
        paths = {task_id: Path(p) for task_id, p in files.items()}
        folder = next(iter(paths.values())).parent if paths else Path(".")
        bundle = cls(folder=folder, amp=amp, tta=tta, jitter=jitter)
        for task_id, path in paths.items():
            model, card = load_task_model(path)
            if card.get("task") != task_id:
                raise InputError(path, f"holds task {card.get('task')!r}, not {task_id!r}")
            bundle.models[task_id] = LoadedTask(
                task_id, model, card, path, tuple(card.get("classes") or ()), _preprocess_for(card)
            )
        bundle.load_seconds = time.perf_counter() - started
        return bundle

    @classmethod
    def load(
        cls,
        folder: str | Path | None = None,
        tasks: Iterable[str] = ANALYSIS_TASKS,
        amp: str = "auto",
        tta: bool = False,
        batch_size: int = DEFAULT_BATCH_SIZE,
        jitter: bool = True,
    ) -> ModelBundle:
        """Loads every ``<task>.safetensors`` present in ``folder`` (default :func:`default_weights_dir`)."""
        from cmrfm.engine.finetune import load_task_model

        started = time.perf_counter()
        folder = Path(folder) if folder is not None else default_weights_dir()
        bundle = cls(folder=folder, amp=amp, tta=tta, batch_size=batch_size, jitter=jitter)
        for task_id in tasks:
            path = folder / f"{task_id}.safetensors"
            if not path.is_file():
                continue
            try:
                model, card = load_task_model(path)
            except (CmrfmError, OSError, ValueError, KeyError, RuntimeError) as err:
                bundle.errors[task_id] = f"{path.name}: {err}"
                continue
            if card.get("task") != task_id:
                bundle.errors[task_id] = f"{path.name} holds task {card.get('task')!r}, not {task_id!r}"
                continue
            bundle.models[task_id] = LoadedTask(
                task_id=task_id,
                model=model,
                card=card,
                path=path,
                classes=tuple(card.get("classes") or model.task.info.classes),
                preprocess=_preprocess_for(card),
            )
        bundle.load_seconds = time.perf_counter() - started
        return bundle

    def has(self, task_id: str) -> bool:
        """Whether weights for ``task_id`` are loaded."""
        return task_id in self.models

    def versions(self) -> dict[str, Any]:
        """Task id -> weights description, for every loaded model (and load errors)."""
        out: dict[str, Any] = {k: v.version() for k, v in self.models.items()}
        for task_id, reason in self.errors.items():
            out[task_id] = {"error": reason}
        return out

    # ------------------------------------------------------------------ inference

    def _autocast(self):
        from cmrfm.engine.finetune import autocast_context

        return autocast_context(torch.device("cpu"), self.amp)

    def _chunks(self, n: int) -> Iterable[slice]:
        for start in range(0, n, self.batch_size):
            yield slice(start, min(n, start + self.batch_size))

    @torch.no_grad()
    def segment(self, task_id: str, images: np.ndarray, groups: Sequence[Any] | None = None) -> SegPrediction:
        """Segments ``(N, H, W)`` preprocessed slices with ``task_id``'s model.

        Args:
            task_id: A loaded segmentation task.
            images: The slices, each volume's in slice order.
            groups: One key per slice naming its volume (e.g. the frame); None: all one volume.
                A model whose card sets ``context_slices`` reads each slice with its volume
                neighbours (:mod:`cmrfm.tasks.context`); one that sets ``heart_zoom`` segments each
                volume again on a crop its predicted heart fills
                (:func:`~cmrfm.tasks.heartzoom.refine_with_zoom`; the uncertainty maps stay those
                of the first pass).
        """
        loaded = self.models[task_id]
        model = loaded.model
        keys = list(groups) if groups is not None else [0] * len(images)
        channels = model.task.input_channels
        slices = np.asarray(images, np.float32)
        if channels > 1:
            images_t = torch.as_tensor(stack_with_neighbours(slices, keys, channels // 2))  # (N, C, H, W)
        else:
            images_t = torch.as_tensor(slices)[:, None]  # (N, 1, H, W)
        size = tuple(images_t.shape[-2:])
        patch = (loaded.card.get("architecture") or {}).get("config", {}).get("patch_size")
        tta = self.tta or getattr(model.task, "analysis_flips", False)
        views = segmentation_views(tta, self.jitter, int(patch or DEFAULT_JITTER_PATCH))
        probs, level_var, tta_var, plain_entropy = [], [], [], []
        for part in self._chunks(len(images_t)):
            outs, variances = self._view_outputs(model, images_t[part], views, size)
            stacked = torch.stack(outs)  # (A, B, C, H, W)
            probs.append(stacked.mean(0).numpy())
            level_var.append(torch.stack(variances).mean(0).numpy())
            if len(views) > 1:
                tta_var.append(stacked.var(0, unbiased=False).numpy())
                plain_entropy.append(normalised_entropy(outs[0].numpy(), axis=1))
        all_probs = np.concatenate(probs)  # (N, C, H, W)
        fill = model.task.heart_zoom_fill
        if fill > 0:

            def predict(zoomed: torch.Tensor) -> torch.Tensor:
                """``(n, C_in, H, W)`` -> view-averaged probabilities ``(n, C, H, W)`` (no variance maps)."""
                parts = []
                for part in self._chunks(len(zoomed)):
                    outs, _ = self._view_outputs(model, zoomed[part], views, size, variance=False)
                    parts.append(torch.stack(outs).mean(0))
                return torch.cat(parts)

            all_probs = refine_with_zoom(
                predict, images_t, torch.as_tensor(all_probs), keys, fill, model.task.heart_classes
            ).numpy()
        return SegPrediction(
            probs=all_probs,
            level_variance=np.concatenate(level_var),
            tta_variance=np.concatenate(tta_var) if tta_var else None,
            identity_entropy=np.concatenate(plain_entropy) if plain_entropy else None,
        )

    def _view_outputs(
        self,
        model: torch.nn.Module,
        batch: torch.Tensor,
        views: list[View],
        size: tuple[int, ...],
        variance: bool = True,
    ) -> tuple[list[torch.Tensor], list[torch.Tensor]]:
        """Per view: class probabilities and (with ``variance``) decoder-level variance ``(B, C, H, W)``."""
        outs, variances = [], []
        for view in views:
            with self._autocast():
                out = model({"image": view.apply(batch)})
            outs.append(view.invert(torch.softmax(out["logits"].float(), dim=1)))  # (B, C, H, W)
            if variance:
                variances.append(view.invert(level_variance(out["stage_logits"], size)))
        return outs, variances

    @torch.no_grad()
    def classify(self, task_id: str, images: np.ndarray) -> np.ndarray:
        """Image-level class probabilities ``(N, K)`` for ``(N, H, W)`` slices."""
        model = self.models[task_id].model
        images_t = torch.as_tensor(np.asarray(images, np.float32))[:, None]  # (N, 1, H, W)
        out = []
        for part in self._chunks(len(images_t)):
            with self._autocast():
                logits = model({"image": images_t[part]})["logits"]
            out.append(torch.softmax(logits.float(), dim=-1).numpy())
        return np.concatenate(out)

    @torch.no_grad()
    def classify_study(
        self, task_id: str, images: np.ndarray, features: np.ndarray | None = None
    ) -> tuple[np.ndarray, np.ndarray]:
        """Study-level probabilities ``(K,)`` and attention ``(S,)`` from a set of ``(S, H, W)`` slices."""
        loaded = self.models[task_id]
        images_t = torch.as_tensor(np.asarray(images, np.float32))[None, :, None]  # (1, S, 1, H, W)
        batch: dict[str, Any] = {
            "images": images_t,
            "set_mask": torch.ones(images_t.shape[:2], dtype=torch.bool),  # (1, S)
        }
        if features is not None and getattr(loaded.model.task, "num_features", 0):
            batch["features"] = torch.as_tensor(np.asarray(features, np.float32))[None]  # (1, F)
        with self._autocast():
            out = loaded.model(batch)
        probs = torch.softmax(out["logits"].float(), dim=-1)[0].numpy()
        attention = out.get("attention")
        weights = (
            attention.float()[0].numpy() if attention is not None else np.full(len(images), 1 / len(images))
        )
        return probs, weights

    @torch.no_grad()
    def landmarks(self, task_id: str, images: np.ndarray) -> np.ndarray:
        """Landmark coordinates ``(N, K, 2)`` as (x = column, y = row) pixels of the model grid."""
        model = self.models[task_id].model
        images_t = torch.as_tensor(np.asarray(images, np.float32))[:, None]  # (N, 1, H, W)
        out = []
        for part in self._chunks(len(images_t)):
            with self._autocast():
                coords = model({"image": images_t[part]})["coords"]
            out.append(coords.float().numpy())
        return np.concatenate(out)


def level_variance(stage_logits: list[torch.Tensor], size: tuple[int, int]) -> torch.Tensor:
    """Per-level uncertainty (:func:`~cmrfm.models.heads.per_level_uncertainty`) made cheaply.

    The variance across decoder levels is computed at :data:`UNCERTAINTY_SIZE` at most and
    upsampled bilinearly to ``size`` (the map is smooth; this saves most of its cost).
    """
    small = (min(size[0], UNCERTAINTY_SIZE), min(size[1], UNCERTAINTY_SIZE))
    var = per_level_uncertainty([s.float() for s in stage_logits], small)  # (B, C, h, w)
    if small == tuple(size):
        return var
    return F.interpolate(var, size=size, mode="bilinear", align_corners=False)


def _preprocess_for(card: dict[str, Any]) -> PreprocessConfig:
    """Preprocessing matching a model: its input size, plus any ``preprocess`` overrides in its card."""
    arch = (card.get("architecture") or {}).get("config") or {}
    config = PreprocessConfig()
    if arch.get("img_size"):
        config.size = int(arch["img_size"])
    for key, value in (card.get("preprocess") or {}).items():
        if hasattr(config, key):
            setattr(config, key, tuple(value) if isinstance(value, list) else value)
    config.validate()
    return config


def write_random_weights(
    folder: str | Path,
    tasks: Iterable[str] = ANALYSIS_TASKS,
    preset: str = "tiny",
    image_size: int = 128,
    backbone: dict[str, Any] | None = None,
    seed: int = 0,
) -> list[Path]:
    """Writes randomly initialised task models (real architecture, real export) into ``folder``.

    For tests and speed benchmarks only: the outputs of such models are meaningless. Their cards
    say ``"init": "random"`` and ``"steps": 0`` and analyses list them under ``model``. Tasks not
    registered in this checkout are skipped.
    """
    from cmrfm.engine.finetune import FinetuneConfig, build_model, build_task, export_model
    from cmrfm.tasks import TASKS

    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    written = []
    for task_id in tasks:
        if task_id not in TASKS.names():
            continue
        torch.manual_seed(seed)
        cfg = FinetuneConfig(
            task=task_id, preset=preset, image_size=image_size, backbone=dict(backbone or {})
        )
        model, _ = build_model(build_task(task_id), cfg)
        card = {"init": "random", "steps": 0, "data": "none (random initialisation)", "mode": "full"}
        written.append(export_model(model, folder / f"{task_id}.safetensors", card, fp16=False))
    return written


__all__ = [
    "ANALYSIS_TASKS",
    "LoadedTask",
    "ModelBundle",
    "SegPrediction",
    "default_weights_dir",
    "write_random_weights",
]
