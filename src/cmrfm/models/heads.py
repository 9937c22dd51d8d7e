"""Task heads on multi-level ViT features.

Heads take what the backbone returns and know nothing of data or tasks:

* :class:`SegmentationDecoder`: UNETR-like. Multi-level token maps ``(B, D, h, w)`` (h = H / patch)
  are brought to successively finer decoder stages by transposed convolutions, fused with the
  upsampled deeper path, and the last stage adds a high-resolution skip computed from the image
  itself; optionally a small convolutional pyramid on the image feeds the finer stages too
  (``conv_skip_stages``), for edges finer than a patch. Every stage also emits logits (deep
  supervision, and per-level predictions whose disagreement gives hierarchical uncertainty maps).
* :class:`LandmarkHead`: a segmentation decoder producing one heatmap per landmark, read out
  with a spatial soft-argmax into sub-pixel coordinates.
* :class:`ClassificationHead`: class token + mean patch token -> linear, for image-level tasks.
* :class:`AttentionPool`: gated-attention pooling over a set of per-image embeddings (slices,
  frames) with a padding mask, for study-level tasks.
* :class:`MaskEvidenceClassifier`: a study-level decision from a segmentation decoder's
  probabilities of a finding (scar), pooled over the study's images.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn


def _norm(channels: int) -> nn.GroupNorm:
    groups = math.gcd(channels, 8)
    return nn.GroupNorm(groups, channels)


class ConvBlock(nn.Sequential):
    """Two 3×3 convolutions with GroupNorm and GELU."""

    def __init__(self, in_channels: int, out_channels: int) -> None:
        super().__init__(
            nn.Conv2d(in_channels, out_channels, 3, padding=1, bias=False),
            _norm(out_channels),
            nn.GELU(),
            nn.Conv2d(out_channels, out_channels, 3, padding=1, bias=False),
            _norm(out_channels),
            nn.GELU(),
        )


class Upsampler(nn.Sequential):
    """``steps`` transposed convolutions, each doubling resolution (``steps`` may be 0)."""

    def __init__(self, in_channels: int, out_channels: int, steps: int) -> None:
        layers: list[nn.Module] = []
        channels = in_channels
        for _ in range(steps):
            layers += [
                nn.ConvTranspose2d(channels, out_channels, 2, stride=2),
                _norm(out_channels),
                nn.GELU(),
            ]
            channels = out_channels
        if steps == 0:
            layers += [nn.Conv2d(in_channels, out_channels, 1), _norm(out_channels), nn.GELU()]
        super().__init__(*layers)


@dataclass
class DecoderOutput:
    """Final logits ``(B, C, H, W)`` and per-stage logits, coarse to fine (each at its own size)."""

    logits: torch.Tensor
    stage_logits: list[torch.Tensor]


class SegmentationDecoder(nn.Module):
    """UNETR-like decoder for a ViT with patch size ``patch_size`` (a power of two).

    Args:
        embed_dim: Channels of each feature level (the ViT width).
        num_levels: Number of feature levels the backbone returns (shallow to deep).
        patch_size: ViT patch size; the decoder has ``log2(patch_size)`` upsampling stages.
        out_channels: Output classes (or heatmaps).
        base_channels: Channels at full resolution; doubles per coarser stage (capped at 256).
        in_chans: Image channels for the high-resolution skip.
        conv_skip_stages: Decoder stages 1..n (1/2, 1/4, ... resolution) that also receive features
            of a convolutional pyramid on the image (0 = the image skip at full resolution only,
            as in UNETR). Patch tokens 8 px wide carry little of a 2-3 px myocardial edge; these
            skips carry it at the resolution where the decoder draws it.
    """

    def __init__(
        self,
        embed_dim: int,
        num_levels: int,
        patch_size: int,
        out_channels: int,
        base_channels: int = 16,
        in_chans: int = 1,
        conv_skip_stages: int = 0,
    ) -> None:
        super().__init__()
        stages = round(math.log2(patch_size))
        if 2**stages != patch_size or stages < 1:
            raise ValueError(f"patch_size must be a power of two ≥ 2, got {patch_size}")
        if num_levels < 1:
            raise ValueError("need at least one feature level")
        if not 0 <= conv_skip_stages < stages:
            raise ValueError(f"conv_skip_stages must be in [0, {stages - 1}] for patch {patch_size}")
        self.stages = stages
        # channels[s] is the width at decoder stage s (s = 0 is full resolution).
        channels = [min(base_channels * 2**s, 256) for s in range(stages + 1)]
        self.channels = channels
        # The deepest level is the bottleneck; the next `stages - 1` levels feed stages
        # stages-1 .. 1 (deep to shallow); any extra shallow levels join the bottleneck.
        n_skip = min(num_levels - 1, stages - 1)
        self.n_extra = num_levels - 1 - n_skip
        self.bottleneck = ConvBlock(embed_dim * (1 + self.n_extra), channels[stages])
        self.skip_stages = list(range(stages - 1, stages - 1 - n_skip, -1))
        self.skips = nn.ModuleList(Upsampler(embed_dim, channels[s], stages - s) for s in self.skip_stages)
        self.image_skip = ConvBlock(in_chans, channels[0])
        # conv_down[s - 1]: stage s - 1 -> s of the image pyramid (half the resolution each)
        self.conv_down = nn.ModuleList(
            nn.Sequential(nn.MaxPool2d(2), ConvBlock(channels[s - 1], channels[s]))
            for s in range(1, conv_skip_stages + 1)
        )
        self.ups = nn.ModuleList(
            nn.ConvTranspose2d(channels[s + 1], channels[s], 2, stride=2) for s in range(stages)
        )
        inputs = [1 + (s in self.skip_stages) + (s <= conv_skip_stages) for s in range(stages)]
        self.fuse = nn.ModuleList(ConvBlock(channels[s] * inputs[s], channels[s]) for s in range(stages))
        self.heads = nn.ModuleList(nn.Conv2d(channels[s], out_channels, 1) for s in range(stages + 1))

    def forward(self, levels: list[torch.Tensor], image: torch.Tensor) -> DecoderOutput:
        """Decodes feature levels ``[(B, D, h, w), ...]`` (shallow to deep) and the image ``(B, C, H, W)``."""
        deep = levels[-1]
        extra = list(levels[: self.n_extra])
        x = self.bottleneck(torch.cat([deep, *extra], dim=1))  # (B, C_top, h, w)
        skip_levels = list(reversed(levels[self.n_extra : -1]))  # deep to shallow
        skip_features = {s: up(f) for s, up, f in zip(self.skip_stages, self.skips, skip_levels, strict=True)}
        pyramid = [self.image_skip(image)]  # (B, C_0, H, W), then (B, C_s, H / 2^s, W / 2^s)
        for down in self.conv_down:
            pyramid.append(down(pyramid[-1]))
        stage_logits = [self.heads[self.stages](x)]
        for s in range(self.stages - 1, -1, -1):
            x = self.ups[s](x)  # (B, C_s, h·2^(stages-s), ...)
            parts = [x]
            if s in skip_features:
                parts.append(skip_features[s])
            if s < len(pyramid):
                parts.append(pyramid[s])
            x = self.fuse[s](torch.cat(parts, dim=1))
            stage_logits.append(self.heads[s](x))
        return DecoderOutput(logits=stage_logits[-1], stage_logits=stage_logits)


class LinearDecoder(nn.Module):
    """Linear-probe dense head: a 1×1 map of the deepest level, bilinearly upsampled to the image.

    Args:
        embed_dim: ViT width.
        out_channels: Output classes (or heatmaps).
    """

    def __init__(self, embed_dim: int, out_channels: int) -> None:
        super().__init__()
        self.proj = nn.Conv2d(embed_dim, out_channels, 1)

    def forward(self, levels: list[torch.Tensor], image: torch.Tensor) -> DecoderOutput:
        """``levels[-1]`` ``(B, D, h, w)`` -> logits ``(B, C, H, W)`` at the image size."""
        coarse = self.proj(levels[-1])  # (B, C, h, w)
        logits = F.interpolate(coarse, size=image.shape[-2:], mode="bilinear", align_corners=False)
        return DecoderOutput(logits=logits, stage_logits=[coarse, logits])


def soft_argmax_2d(heatmaps: torch.Tensor, temperature: float = 1.0) -> torch.Tensor:
    """Expected pixel coordinates under a softmax over each heatmap.

    Args:
        heatmaps: ``(B, K, H, W)`` logits.
        temperature: Softmax temperature (smaller = sharper).

    Returns:
        ``(B, K, 2)`` coordinates as (x = column, y = row) in pixels of the heatmap grid.
    """
    b, k, h, w = heatmaps.shape
    probs = torch.softmax(heatmaps.reshape(b, k, h * w).float() / temperature, dim=-1)  # (B, K, H·W)
    probs = probs.reshape(b, k, h, w)
    ys = torch.arange(h, device=heatmaps.device, dtype=probs.dtype)
    xs = torch.arange(w, device=heatmaps.device, dtype=probs.dtype)
    x = (probs.sum(dim=2) * xs).sum(dim=-1)  # (B, K)
    y = (probs.sum(dim=3) * ys).sum(dim=-1)  # (B, K)
    return torch.stack([x, y], dim=-1)


class LandmarkHead(nn.Module):
    """Heatmap regression with soft-argmax read-out.

    Args:
        embed_dim: ViT width.
        num_levels: Feature levels from the backbone.
        patch_size: ViT patch size.
        num_landmarks: K landmarks.
        linear: Use the linear-probe decoder instead of the UNETR-like one.
        conv_skip_stages: Convolutional skips of the decoder (:class:`SegmentationDecoder`).
    """

    #: Its decoder receives a segmentation model's decoder tensors (``--init`` a ``sax-seg`` model).
    transfer_prefix = "decoder."

    def __init__(
        self,
        embed_dim: int,
        num_levels: int,
        patch_size: int,
        num_landmarks: int,
        linear: bool = False,
        conv_skip_stages: int = 0,
    ) -> None:
        super().__init__()
        self.decoder: nn.Module = (
            LinearDecoder(embed_dim, num_landmarks)
            if linear
            else SegmentationDecoder(
                embed_dim, num_levels, patch_size, num_landmarks, conv_skip_stages=conv_skip_stages
            )
        )
        self.log_temperature = nn.Parameter(torch.zeros(()))

    def forward(self, levels: list[torch.Tensor], image: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Returns heatmaps ``(B, K, H, W)`` and coordinates ``(B, K, 2)`` (x, y) in pixels."""
        heatmaps = self.decoder(levels, image).logits
        return heatmaps, soft_argmax_2d(heatmaps, self.log_temperature.exp())


class ClassificationHead(nn.Module):
    """Linear classifier on ``[cls, mean(patch tokens)]``.

    Args:
        embed_dim: ViT width.
        num_classes: Output classes.
        dropout: Dropout before the linear layer.
    """

    def __init__(self, embed_dim: int, num_classes: int, dropout: float = 0.0) -> None:
        super().__init__()
        self.norm = nn.LayerNorm(2 * embed_dim)
        self.drop = nn.Dropout(dropout)
        self.fc = nn.Linear(2 * embed_dim, num_classes)

    @staticmethod
    def embed(cls_token: torch.Tensor, patch_tokens: torch.Tensor) -> torch.Tensor:
        """``(B, D)`` and ``(B, N, D)`` -> image embedding ``(B, 2D)``."""
        return torch.cat([cls_token, patch_tokens.mean(dim=1)], dim=-1)

    def forward(self, cls_token: torch.Tensor, patch_tokens: torch.Tensor) -> torch.Tensor:
        """Logits ``(B, num_classes)``."""
        return self.fc(self.drop(self.norm(self.embed(cls_token, patch_tokens))))


class AttentionPool(nn.Module):
    """Gated attention pooling over a set (Ilse et al., ICML 2018), padding-aware.

    Args:
        dim: Embedding width of each set element.
        hidden: Width of the attention network.
    """

    def __init__(self, dim: int, hidden: int = 128) -> None:
        super().__init__()
        self.value = nn.Linear(dim, hidden)
        self.gate = nn.Linear(dim, hidden)
        self.score = nn.Linear(hidden, 1)

    def forward(self, x: torch.Tensor, mask: torch.Tensor | None = None) -> tuple[torch.Tensor, torch.Tensor]:
        """Pools ``(B, S, D)`` to ``(B, D)``; ``mask`` ``(B, S)`` is True on real elements."""
        scores = self.score(torch.tanh(self.value(x)) * torch.sigmoid(self.gate(x))).squeeze(-1)  # (B, S)
        if mask is not None:
            scores = scores.masked_fill(~mask, float("-inf"))
        weights = torch.softmax(scores, dim=-1)  # (B, S)
        pooled = torch.einsum("bs,bsd->bd", weights, x)  # (B, D)
        return pooled, weights


def per_level_uncertainty(stage_logits: list[torch.Tensor], size: tuple[int, int]) -> torch.Tensor:
    """Hierarchical uncertainty: variance across decoder levels of upsampled class probabilities.

    Args:
        stage_logits: Per-stage logits ``[(B, C, h_s, w_s), ...]``.
        size: Output size ``(H, W)``.

    Returns:
        ``(B, C, H, W)`` variance of each class probability across levels.
    """
    probs = [
        F.interpolate(torch.softmax(logits.float(), dim=1), size=size, mode="bilinear", align_corners=False)
        for logits in stage_logits
    ]
    return torch.stack(probs, dim=0).var(dim=0, unbiased=False)


class MaskEvidenceClassifier(nn.Module):
    """Study-level classifier on the class probabilities of a segmentation decoder.

    For findings a segmentation model already draws (scar on LGE), the decision "is there any?" is
    best made from the drawn evidence rather than from pooled tokens, which carry little of a
    lesion a few pixels wide. Per image, three statistics of the ``evidence`` classes' probability
    map: log soft area (pixels), share of the ``context`` region (evidence + context classes), and
    the mean of its ``top_k`` highest probabilities; they pass a tiny MLP and gated-attention
    pooling over the images, joined by the set's mean log soft area, then a linear layer.

    Args:
        decoder: A segmentation decoder (``forward(levels, image) -> DecoderOutput``); its tensors
            keep their names under ``decoder.`` so a segmentation model's transfer onto it.
        evidence: Output channels whose probabilities are the finding (e.g. infarct, MVO).
        context: Channels of the tissue the finding lives in (e.g. myocardium).
        num_classes: Study classes.
        hidden: Width of the per-image embedding.
        top_k: Pixels averaged for the peak statistic.
        freeze_decoder: Keep the decoder as transferred (only the small head trains).
    """

    transfer_prefix = "decoder."

    def __init__(
        self,
        decoder: nn.Module,
        evidence: tuple[int, ...],
        context: tuple[int, ...],
        num_classes: int,
        hidden: int = 16,
        top_k: int = 16,
        freeze_decoder: bool = True,
    ) -> None:
        super().__init__()
        self.decoder = decoder
        self.evidence, self.context, self.top_k = list(evidence), list(context), top_k
        #: Tensors under this prefix must all come from the model it starts from (they never train).
        self.frozen_prefix = "decoder." if freeze_decoder else ""
        if freeze_decoder:
            self.decoder.requires_grad_(False)
        self.stats_norm = nn.BatchNorm1d(3, affine=False)
        self.embed = nn.Sequential(nn.Linear(3, hidden), nn.GELU())
        self.pool = AttentionPool(hidden, hidden)
        self.fc = nn.Linear(hidden + 1, num_classes)

    def image_statistics(self, levels: list[torch.Tensor], image: torch.Tensor) -> torch.Tensor:
        """``(M, 3)``: log soft evidence area, its share of the context region, top-k mean probability."""
        probs = torch.softmax(self.decoder(levels, image).logits.float(), dim=1)  # (M, C, H, W)
        evidence = probs[:, self.evidence].sum(dim=1).flatten(1)  # (M, H·W)
        context = probs[:, self.context].sum(dim=1).flatten(1) + evidence  # (M, H·W)
        area = evidence.sum(dim=1)  # (M,)
        share = area / (context.sum(dim=1) + 1.0)
        peak = evidence.topk(min(self.top_k, evidence.shape[1]), dim=1).values.mean(dim=1)
        return torch.stack([torch.log1p(area), share, peak], dim=-1)

    def forward(
        self, levels: list[torch.Tensor], image: torch.Tensor, set_mask: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Levels and images of the real set elements ``(M, ...)`` and ``set_mask`` ``(B, S)``.

        Returns:
            Logits ``(B, num_classes)`` and attention weights ``(B, S)``.
        """
        stats_real = self.image_statistics(levels, image)  # (M, 3)
        stats = stats_real.new_zeros((*set_mask.shape, 3))
        stats[set_mask] = stats_real  # (B, S, 3)
        count = set_mask.float().sum(dim=1).clamp(min=1)  # (B,)
        mean_log_area = stats[..., 0].sum(dim=1) / count  # (B,)
        normed = stats.new_zeros(stats.shape)
        normed[set_mask] = self.stats_norm(stats_real)
        pooled, weights = self.pool(self.embed(normed), set_mask)  # (B, hidden), (B, S)
        logits = self.fc(torch.cat([pooled, mean_log_area[:, None]], dim=-1))
        return logits, weights
