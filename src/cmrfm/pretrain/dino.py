"""DINO self-distillation (Caron et al. 2021) with optional iBOT patch loss and KoLeo regulariser.

A student (backbone + projection head) sees 2 global and N local crops; an EMA teacher sees the global
crops. The teacher's outputs are centred (running mean) and sharpened (low temperature); the student
matches them by cross-entropy across different views. The head's last layer is weight-normalised and
frozen for the first steps. Options from DINOv2: iBOT (the student sees masked patches of the global
crops and predicts the teacher's patch outputs) and KoLeo (spreads the student's class tokens).
"""

from __future__ import annotations

import copy
import itertools
from dataclasses import dataclass, field

import numpy as np
import torch
import torch.distributed as dist
import torch.nn.functional as F
from torch import nn

from cmrfm.engine.optim import cosine_schedule
from cmrfm.models.vit import VisionTransformer
from cmrfm.pretrain.augment import AugmentConfig, MultiCropConfig, multi_crop
from cmrfm.pretrain.objective import Objective

#: Guard of the KoLeo log distance.
KOLEO_EPS = 1e-8


@dataclass
class DINOConfig:
    """DINO/iBOT settings.

    Attributes:
        out_dim: Prototypes (head output width); 65536 in the paper, smaller for CPU runs.
        hidden_dim: Head MLP hidden width.
        bottleneck_dim: Head bottleneck before the weight-normed last layer.
        head_layers: MLP layers before the bottleneck.
        student_temp: Student softmax temperature.
        teacher_temp: Teacher temperature after warm-up.
        warmup_teacher_temp: Teacher temperature at step 0.
        warmup_teacher_temp_steps: Linear warm-up steps of the teacher temperature.
        center_momentum: EMA momentum of the teacher-output centre.
        momentum_teacher: Initial EMA momentum of the teacher (cosine to ``momentum_teacher_end``).
        momentum_teacher_end: Final teacher momentum.
        freeze_last_layer_steps: Steps during which the head's last layer is not updated.
        crops: Multi-crop sizes and scales.
        augment: Augmentation settings for every crop.
        ibot: Add the iBOT masked-patch loss (student gets masked global crops).
        ibot_weight: Weight of the iBOT loss.
        ibot_mask_ratio: Range of the masked-patch fraction per masked image.
        ibot_mask_prob: Probability that a global crop is masked at all.
        koleo_weight: Weight of the KoLeo regulariser (0 disables).
    """

    out_dim: int = 4096
    hidden_dim: int = 1024
    bottleneck_dim: int = 256
    head_layers: int = 3
    student_temp: float = 0.1
    teacher_temp: float = 0.07
    warmup_teacher_temp: float = 0.04
    warmup_teacher_temp_steps: int = 500
    center_momentum: float = 0.9
    momentum_teacher: float = 0.996
    momentum_teacher_end: float = 1.0
    freeze_last_layer_steps: int = 100
    crops: MultiCropConfig = field(default_factory=MultiCropConfig)
    augment: AugmentConfig = field(default_factory=AugmentConfig)
    ibot: bool = False
    ibot_weight: float = 1.0
    ibot_mask_ratio: tuple[float, float] = (0.1, 0.5)
    ibot_mask_prob: float = 0.5
    koleo_weight: float = 0.0


class DINOHead(nn.Module):
    """MLP projection head with a weight-normalised last layer (DINO's ``norm_last_layer=True``).

    Args:
        in_dim: Backbone width.
        out_dim: Number of prototypes.
        hidden_dim: MLP hidden width.
        bottleneck_dim: Width before the last layer.
        layers: MLP layers (>= 1).
    """

    def __init__(self, in_dim: int, out_dim: int, hidden_dim: int, bottleneck_dim: int, layers: int) -> None:
        super().__init__()
        dims = [in_dim] + [hidden_dim] * (max(layers, 1) - 1) + [bottleneck_dim]
        mods: list[nn.Module] = []
        for i, (a, b) in enumerate(itertools.pairwise(dims)):
            mods.append(nn.Linear(a, b))
            if i < len(dims) - 2:
                mods.append(nn.GELU())
        self.mlp = nn.Sequential(*mods)
        self.last_layer = nn.Linear(bottleneck_dim, out_dim, bias=False)  # direction only; norm is 1
        for m in self.mlp:
            if isinstance(m, nn.Linear):
                nn.init.trunc_normal_(m.weight, std=0.02)
                nn.init.zeros_(m.bias)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """(..., D) -> (..., out_dim) logits."""
        x = F.normalize(self.mlp(x), dim=-1)
        return F.linear(x, F.normalize(self.last_layer.weight, dim=-1))


def _all_reduce_mean(x: torch.Tensor) -> torch.Tensor:
    if dist.is_available() and dist.is_initialized():
        x = x.clone()
        dist.all_reduce(x)
        x /= dist.get_world_size()
    return x


def koleo_loss(x: torch.Tensor) -> torch.Tensor:
    """Kozachenko-Leonenko entropy regulariser on (B, D) features: -mean log(nearest-neighbour distance)."""
    x = F.normalize(x.float(), dim=-1)
    sim = x @ x.t()  # (B, B)
    sim.fill_diagonal_(-2.0)
    nearest = sim.max(dim=1).indices
    dist_nn = (x - x[nearest]).norm(dim=-1)
    return -torch.log(dist_nn + KOLEO_EPS).mean()


class DINO(Objective):
    """DINO (optionally + iBOT + KoLeo) around a student backbone.

    Args:
        backbone: Student backbone; the teacher is a copy of it.
        cfg: DINO settings.
    """

    name = "dino"

    def __init__(self, backbone: VisionTransformer, cfg: DINOConfig) -> None:
        super().__init__(backbone)
        self.cfg = cfg
        if not cfg.ibot:
            backbone.mask_token.requires_grad_(False)
        dim = backbone.cfg.embed_dim
        self.head = DINOHead(dim, cfg.out_dim, cfg.hidden_dim, cfg.bottleneck_dim, cfg.head_layers)
        self.teacher_backbone = copy.deepcopy(backbone)
        self.teacher_head = copy.deepcopy(self.head)
        for p in [*self.teacher_backbone.parameters(), *self.teacher_head.parameters()]:
            p.requires_grad_(False)
        self.register_buffer("center", torch.zeros(1, cfg.out_dim))
        self.register_buffer("patch_center", torch.zeros(1, cfg.out_dim))
        self.setup(1)

    def setup(self, total_steps: int) -> None:
        """Teacher momentum (cosine) and teacher temperature (linear warm-up) per step."""
        super().setup(total_steps)
        c = self.cfg
        self.momentum = cosine_schedule(c.momentum_teacher, c.momentum_teacher_end, self.total_steps)
        warm = min(c.warmup_teacher_temp_steps, self.total_steps)
        temps = np.full(self.total_steps, c.teacher_temp)
        temps[:warm] = np.linspace(c.warmup_teacher_temp, c.teacher_temp, warm) if warm else temps[:warm]
        self.teacher_temps = temps

    def _step_value(self, table: np.ndarray, step: int) -> float:
        return float(table[min(step, len(table) - 1)])

    def prepare(self, images: torch.Tensor, gen: torch.Generator) -> dict:
        """Global and local crops, plus iBOT masks for the global crops."""
        globals_, locals_ = multi_crop(images, gen, self.cfg.crops, self.cfg.augment)
        batch: dict = {"globals": torch.cat(globals_), "locals": torch.cat(locals_) if locals_ else None}
        if self.cfg.ibot:
            p = self.backbone.cfg.patch_size
            n = (self.cfg.crops.global_size // p) ** 2
            total = batch["globals"].shape[0]
            lo, hi = self.cfg.ibot_mask_ratio
            ratio = lo + (hi - lo) * torch.rand(total, generator=gen)
            ratio = ratio * (torch.rand(total, generator=gen) < self.cfg.ibot_mask_prob)
            scores = torch.rand(total, n, generator=gen)  # (G·B, N)
            ranks = scores.argsort(dim=1).argsort(dim=1)
            batch["masks"] = ranks < (ratio * n).round().long().unsqueeze(1)  # (G·B, N) bool
        return batch

    def forward(self, batch: dict, step: int) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        """DINO cross-view loss (+ iBOT + KoLeo) for one multi-crop batch."""
        c = self.cfg
        n_global = c.crops.n_global
        globals_, locals_ = batch["globals"], batch["locals"]
        masks = batch.get("masks")
        temp = self._step_value(self.teacher_temps, step)
        with torch.no_grad():
            t_tokens = self.teacher_backbone.forward_tokens(globals_)  # (G·B, 1+N, D)
            t_cls = self.teacher_head(t_tokens[:, 0]).float()  # (G·B, K)
            t_probs = F.softmax((t_cls - self.center) / temp, dim=-1).chunk(n_global)
        s_tokens = self.backbone.forward_tokens(globals_, mask=masks)  # (G·B, 1+N, D)
        s_cls_feats = [s_tokens[:, 0]]
        if locals_ is not None:
            s_cls_feats.append(self.backbone.forward_tokens(locals_)[:, 0])  # (L·B, D)
        s_logits = self.head(torch.cat(s_cls_feats)).float() / c.student_temp  # (V·B, K)
        s_logp = F.log_softmax(s_logits, dim=-1).chunk(n_global + c.crops.n_local)
        loss_terms = []
        for i, tp in enumerate(t_probs):
            for j, lp in enumerate(s_logp):
                if i != j:
                    loss_terms.append(-(tp * lp).sum(dim=-1).mean())
        dino = torch.stack(loss_terms).mean()
        logs = {"dino_loss": dino.detach()}
        loss = dino
        if c.ibot and masks is not None:
            ibot = self._ibot_loss(s_tokens, t_tokens, masks, temp)
            loss = loss + c.ibot_weight * ibot
            logs["ibot_loss"] = ibot.detach()
        if c.koleo_weight > 0:
            koleo = sum(koleo_loss(f) for f in s_tokens[:, 0].chunk(n_global)) / n_global
            loss = loss + c.koleo_weight * koleo
            logs["koleo_loss"] = koleo.detach()
        if self.training:
            self._update_center(t_cls, "center")
        return loss, logs

    def _ibot_loss(
        self, s_tokens: torch.Tensor, t_tokens: torch.Tensor, masks: torch.Tensor, temp: float
    ) -> torch.Tensor:
        """Cross-entropy between teacher and student patch prototypes on the masked patches."""
        if not masks.any():
            return s_tokens.sum() * 0.0
        s_patch = self.head(s_tokens[:, 1:][masks]).float() / self.cfg.student_temp  # (M, K)
        with torch.no_grad():
            t_patch = self.teacher_head(t_tokens[:, 1:][masks]).float()  # (M, K)
            t_probs = F.softmax((t_patch - self.patch_center) / temp, dim=-1)
        per_patch = -(t_probs * F.log_softmax(s_patch, dim=-1)).sum(dim=-1)  # (M,)
        weights = (1.0 / masks.sum(dim=1).clamp(min=1)).unsqueeze(1).expand_as(masks)[masks]  # (M,)
        n_masked_images = (masks.sum(dim=1) > 0).sum().clamp(min=1)
        if self.training:
            self._update_center(t_patch, "patch_center")
        return (per_patch * weights).sum() / n_masked_images

    @torch.no_grad()
    def _update_center(self, teacher_out: torch.Tensor, name: str) -> None:
        mean = _all_reduce_mean(teacher_out.mean(dim=0, keepdim=True))
        center = getattr(self, name)
        center.mul_(self.cfg.center_momentum).add_(mean * (1 - self.cfg.center_momentum))

    def after_backward(self, step: int) -> None:
        """Keeps the head's last layer fixed during the first ``freeze_last_layer_steps`` steps."""
        if step < self.cfg.freeze_last_layer_steps:
            self.head.last_layer.weight.grad = None

    @torch.no_grad()
    def after_step(self, step: int) -> None:
        """EMA update of the teacher from the student."""
        m = self._step_value(self.momentum, step)
        pairs = [(self.teacher_backbone, self.backbone), (self.teacher_head, self.head)]
        for teacher, student in pairs:
            t_params = list(teacher.parameters())
            s_params = [p.detach() for p in student.parameters()]
            torch._foreach_mul_(t_params, m)
            torch._foreach_add_(t_params, s_params, alpha=1 - m)

    def export_backbone(self) -> VisionTransformer:
        """The teacher backbone (DINO's better-performing copy)."""
        return self.teacher_backbone


__all__ = ["DINO", "DINOConfig", "DINOHead", "koleo_loss"]
