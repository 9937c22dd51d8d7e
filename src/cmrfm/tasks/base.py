"""The Task interface: what the shared fine-tuning engine needs from a clinical task.

A task ties data to a head: it declares its data (subjects for patient-level splits and a dataset
factory), builds its head for a backbone, computes outputs and a loss from a batch, and evaluates
a model on a dataset. The engine (:mod:`cmrfm.engine.finetune`) knows only this interface; a new
task is one small file that subclasses a kind in :mod:`cmrfm.tasks.kinds` and registers itself.

Batches are dicts of tensors. Image-level items carry ``image`` ``(1, H, W)``; study-level items
carry ``images`` ``(S, 1, H, W)`` with ``set_mask`` ``(S,)`` after padding. Targets per kind:
``mask`` ``(H, W)`` long, ``label`` long, ``landmarks`` ``(K, 2)`` (x, y) pixels with
``landmark_valid`` ``(K,)`` bool; ``spacing`` ``(2,)`` mm per pixel (x, y); ``subject`` strings.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any, ClassVar, Literal

import torch
from torch import nn
from torch.utils.data import Dataset

from cmrfm.errors import ConfigError
from cmrfm.registry import Registry

TaskKind = Literal["segmentation", "classification", "landmarks"]
TaskLevel = Literal["image", "study"]


@dataclass(frozen=True)
class TaskInfo:
    """What ``cmrfm tasks`` lists.

    Attributes:
        id: Registry id (e.g. ``"sax-seg"``).
        title: One-line description.
        kind: Segmentation, classification or landmarks.
        level: ``"image"`` (one 2D image per item) or ``"study"`` (a set of images per item).
        data: Where the labelled data comes from.
        metric: Primary metric name as reported by :meth:`Task.evaluate`.
        classes: Class (or structure, or landmark) names, in output-channel order.
    """

    id: str
    title: str
    kind: TaskKind
    level: TaskLevel
    data: str
    metric: str
    classes: tuple[str, ...]


@dataclass
class TaskData:
    """A task's labelled corpus.

    Attributes:
        subjects: Subject ids (patients, cases, simulated subjects): the unit of every split.
        strata: One stratification label per subject (e.g. disease group).
        make_dataset: ``(subject_ids, train) -> Dataset`` of items for those subjects; ``train``
            turns on augmentation.
        description: What was loaded (for logs and model cards).
        train_only: Extra subjects (e.g. simulated) added to the training side of every split and
            never evaluated; ``make_dataset`` accepts them too.
    """

    subjects: list[str]
    strata: list[str]
    make_dataset: Callable[[Sequence[str], bool], Dataset]
    description: str = ""
    train_only: list[str] = field(default_factory=list)


@dataclass
class EvalResult:
    """Metrics of a model on a dataset.

    Attributes:
        metrics: Aggregate metrics (primary metric included), each a float.
        intervals: Bootstrap 95 % intervals ``(low, high)`` for the metrics that have one.
        per_subject: One row per evaluated subject (subject id plus per-subject metrics).
    """

    metrics: dict[str, float]
    intervals: dict[str, tuple[float, float]] = field(default_factory=dict)
    per_subject: list[dict[str, Any]] = field(default_factory=list)


class BaselineModel(nn.Module):
    """A conventional model for a task (see :meth:`Task.build_baseline`); called like :class:`TaskModel`."""

    def __init__(self, task: Task, net: nn.Module) -> None:
        super().__init__()
        self.task = task
        self.net = net

    def forward(self, batch: dict[str, Any]) -> dict[str, torch.Tensor]:
        """Task outputs for a batch (adjusted for inference outside training)."""
        return self.task.adjust_outputs(self.net(batch), self.training)


class TaskModel(nn.Module):
    """A backbone and a task head, called through the task's :meth:`Task.forward`."""

    def __init__(self, task: Task, backbone: nn.Module, head: nn.Module) -> None:
        super().__init__()
        self.task = task
        self.backbone = backbone
        self.head = head

    def forward(self, batch: dict[str, Any]) -> dict[str, torch.Tensor]:
        """Task outputs for a batch (adjusted for inference outside training)."""
        return self.task.adjust_outputs(self.task.forward(self.backbone, self.head, batch), self.training)


class Task(ABC):
    """A clinical task. Subclasses set :attr:`info` and :attr:`config_cls` and register themselves.

    Args:
        config: An instance of :attr:`config_cls` (task-specific data and loss settings).
    """

    info: ClassVar[TaskInfo]
    config_cls: ClassVar[type] = object

    def __init__(self, config: Any | None = None) -> None:
        self.config = config if config is not None else self.config_cls()

    @abstractmethod
    def load_data(self) -> TaskData:
        """The task's real (or simulated) labelled corpus; raises a clear error if data is missing."""

    @abstractmethod
    def synthetic_data(self, num_subjects: int = 4, image_size: int = 32) -> TaskData:
        """A tiny synthetic corpus with the same item format (tests, smoke runs)."""

    @abstractmethod
    def build_head(self, embed_dim: int, num_levels: int, patch_size: int, linear: bool = False) -> nn.Module:
        """The task head for a backbone of this width, level count and patch size.

        ``linear=True`` asks for the linear-probe head (a linear map of frozen features).
        """

    def build_baseline(self, image_size: int) -> nn.Module:
        """A conventional model (no ViT) for comparisons at a matched budget.

        Its ``forward(batch)`` returns the same outputs as :meth:`forward`.
        """
        raise NotImplementedError(f"task {self.info.id} has no baseline model")

    @abstractmethod
    def forward(self, backbone: nn.Module, head: nn.Module, batch: dict[str, Any]) -> dict[str, torch.Tensor]:
        """Outputs for a batch (at least what :meth:`loss` and :meth:`evaluate` need)."""

    def adjust_outputs(self, outputs: dict[str, torch.Tensor], training: bool) -> dict[str, torch.Tensor]:
        """Inference-time correction of the outputs (identity unless a task needs one)."""
        return outputs

    def fit_exactly(self, model: nn.Module, dataset: Dataset) -> bool:
        """Fits the head in closed form or by a convex solver when the config asks for it.

        Returns True when it did (the engine then takes no gradient steps); the default never does.
        """
        return False

    def segmentation_link(self, weights: str, card: dict[str, Any]) -> dict[str, Any]:
        """Run settings that make this task work from a fine-tuned segmentation model's output.

        Tasks whose product head decides from drawn masks (disease from cardiac shape and
        function, infarct from drawn scar) override this, so a few-shot sweep can give every run
        the segmentation run of the same labelled subjects (``cmrfm fewshot --via``).

        Args:
            weights: The segmentation model (``model.safetensors`` of a finished run).
            card: Its model card.

        Returns:
            Overrides of the fine-tuning config: ``init`` and/or ``task_options`` entries.

        Raises:
            ConfigError: The task cannot start from a segmentation model, or not from this one.
        """
        raise ConfigError(f"task {self.info.id} does not work from a segmentation model (no --via)")

    @abstractmethod
    def loss(self, outputs: dict[str, torch.Tensor], batch: dict[str, Any]) -> torch.Tensor:
        """Scalar training loss."""

    @abstractmethod
    def evaluate(self, model: TaskModel, dataset: Dataset, batch_size: int = 16) -> EvalResult:
        """Metrics of ``model`` on ``dataset`` (per subject and aggregated with bootstrap CIs)."""

    def collate(self, items: list[dict[str, Any]]) -> dict[str, Any]:
        """Batches items; the default stacks tensors and keeps other values as lists."""
        return default_collate(items)


def default_collate(items: list[dict[str, Any]]) -> dict[str, Any]:
    """Stacks tensor values of equal shape; lists everything else."""
    batch: dict[str, Any] = {}
    for key in items[0]:
        values = [item[key] for item in items]
        if isinstance(values[0], torch.Tensor):
            batch[key] = torch.stack(values)
        elif isinstance(values[0], int | float | bool):
            batch[key] = torch.tensor(values)
        else:
            batch[key] = values
    return batch


def pad_set_collate(items: list[dict[str, Any]], set_key: str = "images") -> dict[str, Any]:
    """Collates study-level items with different set sizes: pads ``set_key`` and adds ``set_mask``."""
    longest = max(item[set_key].shape[0] for item in items)
    padded = []
    for item in items:
        images = item[set_key]  # (S, C, H, W)
        pad = longest - images.shape[0]
        mask = torch.zeros(longest, dtype=torch.bool)
        mask[: images.shape[0]] = True
        if pad:
            images = torch.cat([images, images.new_zeros((pad, *images.shape[1:]))])
        padded.append({**item, set_key: images, "set_mask": mask})
    return default_collate(padded)


TASKS: Registry[type[Task]] = Registry("task")


def register_task(cls: type[Task]) -> type[Task]:
    """Class decorator: registers a task under ``cls.info.id``."""
    return TASKS.register(cls.info.id)(cls)
