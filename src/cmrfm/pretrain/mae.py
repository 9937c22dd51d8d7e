"""Masked autoencoder (He et al. 2022): mask 75 % of patches, encode the rest, reconstruct pixels.

The encoder is the shared :class:`~cmrfm.models.vit.VisionTransformer` (visible tokens only); a light
decoder (a few narrow blocks) predicts every patch, and the loss is the mean squared error on masked
patches against per-patch normalised pixels.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import torch
import torch.nn.functional as F
from torch import nn

from cmrfm.models.vit import NORM_EPS, Block, VisionTransformer, patchify
from cmrfm.pretrain.augment import AugmentConfig, augment_view
from cmrfm.pretrain.objective import Objective

#: Variance guard of the per-patch pixel normalisation.
PATCH_NORM_EPS = 1e-6


@dataclass
class MAEConfig:
    """MAE settings.

    Attributes:
        mask_ratio: Fraction of patches hidden from the encoder.
        decoder_dim: Decoder token width.
        decoder_depth: Decoder blocks.
        decoder_heads: Decoder attention heads.
        norm_pix_loss: Normalise each target patch to zero mean, unit variance.
        crop_scale: Area-fraction range of the (single) random resized crop.
        augment: Augmentation settings for the crop (usually milder than DINO's).
    """

    mask_ratio: float = 0.75
    decoder_dim: int = 128
    decoder_depth: int = 2
    decoder_heads: int = 4
    norm_pix_loss: bool = True
    crop_scale: tuple[float, float] = (0.5, 1.0)
    augment: AugmentConfig = field(default_factory=lambda: AugmentConfig(kspace_p=0.0, noise_p=0.0))


class MAE(Objective):
    """MAE objective around a student backbone.

    Args:
        backbone: Encoder.
        cfg: MAE settings.
    """

    name = "mae"

    def __init__(self, backbone: VisionTransformer, cfg: MAEConfig) -> None:
        super().__init__(backbone)
        self.cfg = cfg
        bcfg = backbone.cfg
        self.patch_size = bcfg.patch_size
        n = (bcfg.img_size // bcfg.patch_size) ** 2
        self.num_patches = n
        backbone.mask_token.requires_grad_(False)  # MAE drops tokens instead of masking them
        self.decoder_embed = nn.Linear(bcfg.embed_dim, cfg.decoder_dim)
        self.decoder_mask_token = nn.Parameter(torch.zeros(1, 1, cfg.decoder_dim))
        self.decoder_pos_embed = nn.Parameter(torch.zeros(1, 1 + n, cfg.decoder_dim))
        self.decoder_blocks = nn.ModuleList(
            Block(cfg.decoder_dim, cfg.decoder_heads, 4.0, True, 0.0, None, bcfg.attention)
            for _ in range(cfg.decoder_depth)
        )
        self.decoder_norm = nn.LayerNorm(cfg.decoder_dim, eps=NORM_EPS)
        self.decoder_pred = nn.Linear(cfg.decoder_dim, bcfg.patch_size**2 * bcfg.in_chans)
        nn.init.trunc_normal_(self.decoder_mask_token, std=0.02)
        nn.init.trunc_normal_(self.decoder_pos_embed, std=0.02)

    def prepare(self, images: torch.Tensor, gen: torch.Generator) -> dict[str, torch.Tensor]:
        """One augmented view at the backbone's size and a random keep/restore order per image."""
        size = self.backbone.cfg.img_size
        view = augment_view(images, size, tuple(self.cfg.crop_scale), gen, self.cfg.augment)
        noise = torch.rand(images.shape[0], self.num_patches, generator=gen)  # (B, N)
        order = noise.argsort(dim=1)  # (B, N): first n_keep are kept
        restore = order.argsort(dim=1)  # (B, N)
        return {"image": view, "order": order, "restore": restore}

    def forward(self, batch: dict, step: int) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        """Masked reconstruction loss on masked patches."""
        x, order, restore = batch["image"], batch["order"], batch["restore"]
        b, n = order.shape
        n_keep = max(1, round(n * (1 - self.cfg.mask_ratio)))
        keep = order[:, :n_keep]  # (B, K)
        latent = self.backbone.forward_tokens(x, keep=keep)  # (B, 1+K, D)
        y = self.decoder_embed(latent)  # (B, 1+K, Dd)
        fill = self.decoder_mask_token.to(y.dtype).expand(b, n - n_keep, -1)  # (B, N-K, Dd)
        patches = torch.cat([y[:, 1:], fill], dim=1)  # (B, N, Dd) in shuffled order
        index = restore.unsqueeze(-1).expand(-1, -1, y.shape[-1])  # (B, N, Dd)
        patches = torch.gather(patches, 1, index)  # (B, N, Dd) in image order
        y = torch.cat([y[:, :1], patches], dim=1) + self.decoder_pos_embed.to(y.dtype)  # (B, 1+N, Dd)
        for block in self.decoder_blocks:
            y = block(y)
        pred = self.decoder_pred(self.decoder_norm(y))[:, 1:].float()  # (B, N, p·p·C)
        target = patchify(x.float(), self.patch_size)  # (B, N, p·p·C)
        if self.cfg.norm_pix_loss:
            mean = target.mean(dim=-1, keepdim=True)
            var = target.var(dim=-1, keepdim=True)
            target = (target - mean) / (var + PATCH_NORM_EPS).sqrt()
        per_patch = F.mse_loss(pred, target, reduction="none").mean(dim=-1)  # (B, N)
        mask = torch.ones(b, n, device=x.device)
        mask[:, :n_keep] = 0
        mask = torch.gather(mask, 1, restore)  # (B, N): 1 = masked, in image order
        loss = (per_patch * mask).sum() / mask.sum()
        return loss, {"mae_loss": loss.detach()}
