"""A Vision Transformer for single-channel 2D CMR images (the cmrfm backbone).

The backbone every task head builds on::

    cfg = vit_config("small")                      # ViT-S/8 of the reference paper
    model = VisionTransformer(cfg)
    out = model.forward_features(x)                # x: (B, 1, H, W), H and W multiples of 8
    out.cls            # (B, D) normed class token
    out.patch_tokens   # (B, N, D) normed patch tokens, N = (H/8)·(W/8)
    out.levels         # [(B, D, H/8, W/8)] × len(cfg.feature_levels), for dense heads
    out.grid           # (H/8, W/8)

Input convention: one channel, each image standardised on its own (zero mean, unit variance over the
image; :func:`standardize`). Positional embeddings are learned at ``img_size`` and resized bicubically
for other sizes, so fine-tuning at another resolution works.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from typing import Any, Literal

import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.checkpoint import checkpoint

from cmrfm.errors import ConfigError
from cmrfm.models.attention import Attention, AttentionKind

#: Truncated-normal std for token and position embeddings (ViT/DINO habit).
EMBED_INIT_STD = 0.02
#: LayerNorm epsilon.
NORM_EPS = 1e-6
#: Number of evenly spaced blocks returned as ``levels`` by default.
DEFAULT_NUM_LEVELS = 4
#: Per-image standardisation guard against flat images.
STANDARDIZE_EPS = 1e-6


@dataclass
class ViTConfig:
    """Architecture of the backbone (everything needed to rebuild it from a model card).

    Attributes:
        img_size: Training image side in pixels (positional embeddings are learned at this grid).
        patch_size: Square patch side in pixels.
        in_chans: Input channels (1 for CMR magnitude images).
        embed_dim: Token width D.
        depth: Number of transformer blocks.
        num_heads: Attention heads per block.
        mlp_ratio: MLP hidden width as a multiple of D.
        qkv_bias: Whether q/k/v projections have a bias.
        drop_path_rate: Stochastic depth rate of the last block (linearly increasing from 0).
        layer_scale_init: LayerScale initial value (``None`` disables LayerScale).
        pos_embed: ``"learned"`` (resized bicubically to other grids).
        feature_levels: 0-based block indices whose tokens are returned as ``levels``; empty means
            :data:`DEFAULT_NUM_LEVELS` evenly spaced blocks ending at the last.
        attention: ``"auto"`` (measured table per device/dtype), ``"matmul"`` or ``"sdpa"``.
        grad_checkpointing: Recompute block activations in backward to save memory.
    """

    img_size: int = 128
    patch_size: int = 8
    in_chans: int = 1
    embed_dim: int = 384
    depth: int = 12
    num_heads: int = 6
    mlp_ratio: float = 4.0
    qkv_bias: bool = True
    drop_path_rate: float = 0.0
    layer_scale_init: float | None = None
    pos_embed: Literal["learned"] = "learned"
    feature_levels: tuple[int, ...] = ()
    attention: AttentionKind = "auto"
    grad_checkpointing: bool = False

    def levels(self) -> tuple[int, ...]:
        """The block indices returned as ``levels`` (resolving the empty default)."""
        if self.feature_levels:
            return tuple(self.feature_levels)
        n = min(DEFAULT_NUM_LEVELS, self.depth)
        return tuple(round((i + 1) * self.depth / n) - 1 for i in range(n))

    def to_dict(self) -> dict[str, Any]:
        """A JSON-serialisable dict (``feature_levels`` resolved)."""
        data = dataclasses.asdict(self)
        data["feature_levels"] = list(self.levels())
        return data

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> ViTConfig:
        """Rebuilds a config from :meth:`to_dict` output; unknown keys are an error."""
        names = {f.name for f in dataclasses.fields(cls)}
        unknown = set(data) - names
        if unknown:
            raise ConfigError(f"unknown ViT config keys {sorted(unknown)}; valid keys: {sorted(names)}")
        data = dict(data)
        if "feature_levels" in data:
            data["feature_levels"] = tuple(data["feature_levels"])
        return cls(**data)


#: Named presets. ``tiny`` is sized to pretrain on two CPU cores (see benchmarks/RESULTS.md).
PRESETS: dict[str, dict[str, Any]] = {
    "tiny": {"embed_dim": 192, "depth": 8, "num_heads": 3},
    "small": {"embed_dim": 384, "depth": 12, "num_heads": 6},
    "base": {"embed_dim": 768, "depth": 12, "num_heads": 12},
}


def vit_config(name: str = "small", **overrides: Any) -> ViTConfig:
    """Returns the preset ``name`` (``tiny``, ``small`` = ViT-S/8, ``base``) with ``overrides`` applied."""
    if name not in PRESETS:
        raise ConfigError(f"unknown ViT preset {name!r}; choose one of: {', '.join(PRESETS)}")
    values = {**PRESETS[name], **overrides}
    if "feature_levels" in values:
        values["feature_levels"] = tuple(values["feature_levels"])
    return ViTConfig(**values)


def standardize(x: torch.Tensor) -> torch.Tensor:
    """Per-image zero-mean, unit-variance standardisation of (B, C, H, W) images (the input convention)."""
    mean = x.mean(dim=(-2, -1), keepdim=True)  # (B, C, 1, 1)
    std = x.std(dim=(-2, -1), keepdim=True)  # (B, C, 1, 1)
    return (x - mean) / (std + STANDARDIZE_EPS)


@dataclass
class BackboneOutput:
    """What :meth:`VisionTransformer.forward_features` returns.

    Attributes:
        cls: (B, D) normed class token.
        patch_tokens: (B, N, D) normed patch tokens (only the kept ones when ``keep`` was given).
        levels: One (B, D, h, w) map per ``feature_levels`` block (normed); empty when ``keep`` was given.
        grid: Patch grid ``(h, w)`` of the input.
    """

    cls: torch.Tensor
    patch_tokens: torch.Tensor
    levels: list[torch.Tensor] = field(default_factory=list)
    grid: tuple[int, int] = (0, 0)


class DropPath(nn.Module):
    """Stochastic depth: drops a residual branch per sample with probability ``p`` during training."""

    def __init__(self, p: float = 0.0) -> None:
        super().__init__()
        self.p = p

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Scales surviving samples by 1/(1-p) and zeroes the dropped ones."""
        if self.p == 0.0 or not self.training:
            return x
        keep = 1.0 - self.p
        mask = x.new_empty((x.shape[0],) + (1,) * (x.ndim - 1)).bernoulli_(keep)  # (B, 1, 1)
        return x * mask / keep


class Mlp(nn.Module):
    """Two-layer GELU MLP."""

    def __init__(self, dim: int, hidden: int) -> None:
        super().__init__()
        self.fc1 = nn.Linear(dim, hidden)
        self.fc2 = nn.Linear(hidden, dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """(B, N, D) -> (B, N, D)."""
        return self.fc2(F.gelu(self.fc1(x)))


class Block(nn.Module):
    """Pre-norm transformer block: x + attn(norm(x)), then x + mlp(norm(x))."""

    def __init__(
        self,
        dim: int,
        num_heads: int,
        mlp_ratio: float = 4.0,
        qkv_bias: bool = True,
        drop_path: float = 0.0,
        layer_scale_init: float | None = None,
        attention: AttentionKind = "auto",
    ) -> None:
        super().__init__()
        self.norm1 = nn.LayerNorm(dim, eps=NORM_EPS)
        self.attn = Attention(dim, num_heads, qkv_bias=qkv_bias, kind=attention)
        self.norm2 = nn.LayerNorm(dim, eps=NORM_EPS)
        self.mlp = Mlp(dim, int(dim * mlp_ratio))
        self.drop_path = DropPath(drop_path)
        if layer_scale_init is not None:
            self.gamma1 = nn.Parameter(torch.full((dim,), layer_scale_init))
            self.gamma2 = nn.Parameter(torch.full((dim,), layer_scale_init))
        else:
            self.gamma1 = self.gamma2 = None

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """(B, N, D) -> (B, N, D)."""
        y = self.attn(self.norm1(x))
        x = x + self.drop_path(y if self.gamma1 is None else self.gamma1 * y)
        y = self.mlp(self.norm2(x))
        return x + self.drop_path(y if self.gamma2 is None else self.gamma2 * y)


class PatchEmbed(nn.Module):
    """Non-overlapping patches to tokens, as a reshape and one matmul (equal to a stride-p conv).

    The reshape-plus-linear form is faster than a strided convolution under CPU bf16 autocast.
    """

    def __init__(self, patch_size: int, in_chans: int, dim: int) -> None:
        super().__init__()
        self.patch_size = patch_size
        self.proj = nn.Linear(in_chans * patch_size * patch_size, dim)

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, tuple[int, int]]:
        """(B, C, H, W) -> tokens (B, N, D) and grid (H/p, W/p)."""
        b, c, h, w = x.shape
        p = self.patch_size
        if h % p or w % p:
            raise ValueError(f"image size {h}×{w} is not divisible by the patch size {p}")
        gh, gw = h // p, w // p
        x = x.reshape(b, c, gh, p, gw, p).permute(0, 2, 4, 1, 3, 5)  # (B, gh, gw, C, p, p)
        x = x.reshape(b, gh * gw, c * p * p)  # (B, N, C·p·p)
        return self.proj(x), (gh, gw)


def patchify(x: torch.Tensor, patch_size: int) -> torch.Tensor:
    """(B, C, H, W) images -> (B, N, p·p·C) patches, in the order :class:`PatchEmbed` uses."""
    b, c, h, w = x.shape
    p = patch_size
    x = x.reshape(b, c, h // p, p, w // p, p).permute(0, 2, 4, 1, 3, 5)  # (B, gh, gw, C, p, p)
    return x.reshape(b, (h // p) * (w // p), c * p * p)  # (B, N, C·p·p)


def unpatchify(x: torch.Tensor, patch_size: int, grid: tuple[int, int], chans: int = 1) -> torch.Tensor:
    """Inverse of :func:`patchify`: (B, N, p·p·C) -> (B, C, H, W)."""
    b = x.shape[0]
    p = patch_size
    gh, gw = grid
    x = x.reshape(b, gh, gw, chans, p, p).permute(0, 3, 1, 4, 2, 5)  # (B, C, gh, p, gw, p)
    return x.reshape(b, chans, gh * p, gw * p)


def resize_pos_embed(pos: torch.Tensor, src_grid: tuple[int, int], dst_grid: tuple[int, int]) -> torch.Tensor:
    """Bicubically resizes patch position embeddings (1, h·w, D) from ``src_grid`` to ``dst_grid``."""
    if src_grid == dst_grid:
        return pos
    d = pos.shape[-1]
    grid = pos.reshape(1, src_grid[0], src_grid[1], d).permute(0, 3, 1, 2)  # (1, D, h, w)
    grid = F.interpolate(grid.float(), size=dst_grid, mode="bicubic", align_corners=False)
    return grid.to(pos.dtype).permute(0, 2, 3, 1).reshape(1, dst_grid[0] * dst_grid[1], d)  # (1, N', D)


class VisionTransformer(nn.Module):
    """The cmrfm ViT backbone (see the module docstring for the output contract).

    Args:
        cfg: Architecture; see :class:`ViTConfig`.
    """

    def __init__(self, cfg: ViTConfig) -> None:
        super().__init__()
        if cfg.img_size % cfg.patch_size:
            raise ConfigError(f"img_size {cfg.img_size} is not divisible by patch_size {cfg.patch_size}")
        if any(not 0 <= i < cfg.depth for i in cfg.levels()):
            raise ConfigError(f"feature_levels {cfg.feature_levels} must lie in [0, {cfg.depth - 1}]")
        self.cfg = cfg
        d = cfg.embed_dim
        self.grid = (cfg.img_size // cfg.patch_size,) * 2
        self.patch_embed = PatchEmbed(cfg.patch_size, cfg.in_chans, d)
        self.cls_token = nn.Parameter(torch.zeros(1, 1, d))
        self.mask_token = nn.Parameter(torch.zeros(1, 1, d))
        self.pos_embed = nn.Parameter(torch.zeros(1, 1 + self.grid[0] * self.grid[1], d))
        rates = [cfg.drop_path_rate * i / max(cfg.depth - 1, 1) for i in range(cfg.depth)]
        self.blocks = nn.ModuleList(
            Block(d, cfg.num_heads, cfg.mlp_ratio, cfg.qkv_bias, rate, cfg.layer_scale_init, cfg.attention)
            for rate in rates
        )
        self.norm = nn.LayerNorm(d, eps=NORM_EPS)
        self.grad_checkpointing = cfg.grad_checkpointing
        self._init_weights()

    @property
    def embed_dim(self) -> int:
        """Token width D."""
        return self.cfg.embed_dim

    def _init_weights(self) -> None:
        nn.init.trunc_normal_(self.pos_embed, std=EMBED_INIT_STD)
        nn.init.trunc_normal_(self.cls_token, std=EMBED_INIT_STD)
        nn.init.trunc_normal_(self.mask_token, std=EMBED_INIT_STD)
        for m in self.modules():
            if isinstance(m, nn.Linear):
                nn.init.trunc_normal_(m.weight, std=EMBED_INIT_STD)
                if m.bias is not None:
                    nn.init.zeros_(m.bias)
            elif isinstance(m, nn.LayerNorm):
                nn.init.ones_(m.weight)
                nn.init.zeros_(m.bias)

    def no_weight_decay(self) -> set[str]:
        """Parameter names exempt from weight decay (besides biases and norms)."""
        return {"pos_embed", "cls_token", "mask_token"}

    def layer_id(self, name: str) -> int:
        """Depth of parameter ``name`` for layer-wise lr decay: 0 embeddings, i+1 block i, depth+1 rest."""
        if name.startswith(("patch_embed", "cls_token", "pos_embed", "mask_token")):
            return 0
        if name.startswith("blocks."):
            return int(name.split(".")[1]) + 1
        return self.cfg.depth + 1

    def set_grad_checkpointing(self, enabled: bool = True) -> None:
        """Turns activation recomputation on or off."""
        self.grad_checkpointing = enabled

    def embed(
        self, x: torch.Tensor, mask: torch.Tensor | None = None, keep: torch.Tensor | None = None
    ) -> tuple[torch.Tensor, tuple[int, int]]:
        """Tokens (with class token and positions) before the blocks.

        Args:
            x: (B, C, H, W) images.
            mask: Optional (B, N) bool; True patches are replaced by the learned mask token (iBOT).
            keep: Optional (B, K) long indices of patches to keep, others dropped (MAE).

        Returns:
            Tokens (B, 1 + N or 1 + K, D) and the patch grid.
        """
        tokens, grid = self.patch_embed(x)  # (B, N, D)
        if mask is not None:
            tokens = torch.where(mask.unsqueeze(-1), self.mask_token.to(tokens.dtype), tokens)
        pos = resize_pos_embed(self.pos_embed[:, 1:], self.grid, grid)  # (1, N, D)
        tokens = tokens + pos
        if keep is not None:
            index = keep.unsqueeze(-1).expand(-1, -1, tokens.shape[-1])  # (B, K, D)
            tokens = torch.gather(tokens, 1, index)  # (B, K, D)
        cls = (self.cls_token + self.pos_embed[:, :1]).expand(tokens.shape[0], -1, -1)  # (B, 1, D)
        return torch.cat([cls, tokens], dim=1), grid

    def _run_block(self, block: nn.Module, x: torch.Tensor) -> torch.Tensor:
        if self.grad_checkpointing and self.training and torch.is_grad_enabled():
            return checkpoint(block, x, use_reentrant=False)
        return block(x)

    def forward_features(
        self, x: torch.Tensor, mask: torch.Tensor | None = None, keep: torch.Tensor | None = None
    ) -> BackboneOutput:
        """Runs the backbone; see :class:`BackboneOutput` (``mask``/``keep`` as in :meth:`embed`)."""
        tokens, grid = self.embed(x, mask=mask, keep=keep)  # (B, 1+N, D)
        wanted = set(self.cfg.levels()) if keep is None else set()
        levels = []
        for i, block in enumerate(self.blocks):
            tokens = self._run_block(block, tokens)
            if i in wanted:
                levels.append(self._to_map(self.norm(tokens[:, 1:]), grid))
        out = self.norm(tokens)  # (B, 1+N, D)
        return BackboneOutput(cls=out[:, 0], patch_tokens=out[:, 1:], levels=levels, grid=grid)

    @staticmethod
    def _to_map(tokens: torch.Tensor, grid: tuple[int, int]) -> torch.Tensor:
        b, _, d = tokens.shape
        return tokens.transpose(1, 2).reshape(b, d, grid[0], grid[1])  # (B, D, h, w)

    def forward_tokens(
        self, x: torch.Tensor, mask: torch.Tensor | None = None, keep: torch.Tensor | None = None
    ) -> torch.Tensor:
        """Normed tokens (B, 1+N, D) without building level maps (what pretraining objectives use)."""
        tokens, _ = self.embed(x, mask=mask, keep=keep)
        for block in self.blocks:
            tokens = self._run_block(block, tokens)
        return self.norm(tokens)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """(B, C, H, W) -> (B, D) class token."""
        return self.forward_tokens(x)[:, 0]


def count_flops_per_image(cfg: ViTConfig, tokens: int | None = None) -> float:
    """Forward multiply-add FLOPs (×2) of the transformer for one image of ``tokens`` patches."""
    n = (cfg.img_size // cfg.patch_size) ** 2 if tokens is None else tokens
    n += 1
    d = cfg.embed_dim
    hidden = int(d * cfg.mlp_ratio)
    per_block = 2 * n * (3 * d * d + d * d + 2 * d * hidden) + 2 * 2 * n * n * d
    return cfg.depth * per_block + 2 * (n - 1) * cfg.patch_size**2 * cfg.in_chans * d


def _num_params(module: nn.Module) -> int:
    return sum(p.numel() for p in module.parameters())


def describe(cfg: ViTConfig) -> str:
    """One line naming the architecture (for logs and cards)."""
    params = _num_params(VisionTransformer(cfg)) / 1e6
    gflops = count_flops_per_image(cfg) / 1e9
    return (
        f"ViT D={cfg.embed_dim} depth={cfg.depth} heads={cfg.num_heads} patch={cfg.patch_size} "
        f"img={cfg.img_size}: {params:.1f} M params, {gflops:.2f} GFLOP/image forward"
    )


def compile_blocks(model: nn.Module, dynamic: bool | None = None) -> int:
    """Compiles every transformer :class:`Block` inside ``model`` in place with ``torch.compile``.

    The blocks are where a ViT spends its time; compiling them fuses each block's LayerNorms,
    GELU, residual adds and autocast casts into a few kernels around the matmuls (measured in
    ``benchmarks/bench_backbone.py``). All blocks share one compiled graph, so the first step pays
    one compilation (about 15 s on 2 CPU cores). Parameter names and ``state_dict`` keys are
    unchanged, so checkpoints and exported weights are the same as without compiling.

    Args:
        model: Any module holding blocks (a backbone, a DINO student/teacher pair, a task model).
        dynamic: Passed to ``torch.compile`` (``None`` lets it detect changing shapes such as
            DINO's global and local crops).

    Returns:
        The number of blocks compiled.
    """
    blocks = [m for m in model.modules() if isinstance(m, Block)]
    for block in blocks:
        block.compile(dynamic=dynamic)
    return len(blocks)


__all__ = [
    "BackboneOutput",
    "ViTConfig",
    "VisionTransformer",
    "compile_blocks",
    "count_flops_per_image",
    "patchify",
    "standardize",
    "unpatchify",
    "vit_config",
]
