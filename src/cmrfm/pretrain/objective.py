"""The interface every pretraining objective implements (DINO, MAE), so one loop runs them all.

Randomness lives in :meth:`Objective.prepare` (views, masks), drawn from an explicit generator, so the
module's ``forward`` is a pure function of the batch and the weights (what DDP and exact resume need).
"""

from __future__ import annotations

import torch
from torch import nn

from cmrfm.models.vit import VisionTransformer


class Objective(nn.Module):
    """Base class: a student backbone plus whatever the objective adds (heads, decoder, teacher).

    Attributes:
        name: Registry name (``"dino"``, ``"mae"``).
        backbone: The student backbone being trained.
    """

    name = "objective"

    def __init__(self, backbone: VisionTransformer) -> None:
        super().__init__()
        self.backbone = backbone
        self.total_steps = 1

    def setup(self, total_steps: int) -> None:
        """Builds step schedules (momentum, temperatures) for a run of ``total_steps``."""
        self.total_steps = max(int(total_steps), 1)

    def prepare(self, images: torch.Tensor, gen: torch.Generator) -> dict[str, torch.Tensor | list]:
        """Turns a batch of raw images (B, 1, H, W) into the objective's inputs (views, masks)."""
        raise NotImplementedError

    def forward(self, batch: dict, step: int) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        """Returns the loss and detached log values for ``batch`` at ``step``."""
        raise NotImplementedError

    def after_backward(self, step: int) -> None:
        """Called after ``backward`` and before the optimiser step (e.g. freezing a layer)."""

    @torch.no_grad()
    def after_step(self, step: int) -> None:
        """Called after the optimiser step (e.g. the EMA teacher update)."""

    def export_backbone(self) -> VisionTransformer:
        """The backbone whose weights are shipped (DINO: the teacher; MAE: the encoder)."""
        return self.backbone

    def trainable_backbone_prefix(self) -> str:
        """Name prefix of the student backbone's parameters inside this module."""
        return "backbone."
