"""Multi-head self-attention with two interchangeable kernels, chosen by measurement.

``matmul`` is the textbook ``softmax(q kᵀ / √d) v`` in three ops; ``sdpa`` is PyTorch's fused
:func:`torch.nn.functional.scaled_dot_product_attention`. Which one is faster depends on the device and
dtype: :data:`ATTENTION_TABLE` records what ``benchmarks/bench_backbone.py`` measured, and ``"auto"``
looks the kernel up there at call time (so one model runs well under fp32, bf16 autocast and CUDA).
"""

from __future__ import annotations

from typing import Literal

import torch
import torch.nn.functional as F
from torch import nn

AttentionKind = Literal["auto", "matmul", "sdpa"]

#: (device type, compute dtype) -> fastest kernel for training, measured by benchmarks/bench_backbone.py
#: (see benchmarks/RESULTS.md): on an AVX512-BF16 CPU, bf16 training of the tiny preset ran ~1.6x
#: faster with matmul attention than with PyTorch's CPU flash kernel; fp32 was a tie. Entries absent
#: here fall back to ``sdpa``.
ATTENTION_TABLE: dict[tuple[str, torch.dtype], str] = {
    ("cpu", torch.float32): "sdpa",
    ("cpu", torch.bfloat16): "matmul",
    ("cuda", torch.float32): "sdpa",
    ("cuda", torch.bfloat16): "sdpa",
    ("cuda", torch.float16): "sdpa",
}


def resolve_attention(kind: str, q: torch.Tensor) -> str:
    """Returns ``"matmul"`` or ``"sdpa"`` for ``kind`` given queries ``q`` (``"auto"`` looks up the table).

    ``q`` is the output of the q/k/v projection, so under autocast its dtype is the compute dtype.
    """
    if kind != "auto":
        return kind
    return ATTENTION_TABLE.get((q.device.type, q.dtype), "sdpa")


class Attention(nn.Module):
    """Multi-head self-attention over a token sequence.

    Args:
        dim: Token width.
        num_heads: Number of heads (``dim`` must be divisible by it).
        qkv_bias: Whether the fused q/k/v projection has a bias.
        kind: ``"auto"``, ``"matmul"`` or ``"sdpa"``.
    """

    def __init__(self, dim: int, num_heads: int, qkv_bias: bool = True, kind: AttentionKind = "auto") -> None:
        super().__init__()
        if dim % num_heads:
            raise ValueError(f"embed_dim {dim} is not divisible by num_heads {num_heads}")
        self.num_heads = num_heads
        self.head_dim = dim // num_heads
        self.scale = self.head_dim**-0.5
        self.kind = kind
        self.qkv = nn.Linear(dim, 3 * dim, bias=qkv_bias)
        self.proj = nn.Linear(dim, dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Attends over tokens ``x`` of shape (B, N, D) and returns (B, N, D)."""
        b, n, d = x.shape
        qkv = self.qkv(x).reshape(b, n, 3, self.num_heads, self.head_dim)  # (B, N, 3, H, Dh)
        q, k, v = qkv.permute(2, 0, 3, 1, 4).unbind(0)  # 3 × (B, H, N, Dh)
        if resolve_attention(self.kind, q) == "sdpa":
            out = F.scaled_dot_product_attention(q, k, v)  # (B, H, N, Dh)
        else:
            attn = (q * self.scale) @ k.transpose(-2, -1)  # (B, H, N, N)
            attn = attn.softmax(dim=-1)
            out = attn @ v  # (B, H, N, Dh)
        out = out.transpose(1, 2).reshape(b, n, d)  # (B, N, D)
        return self.proj(out)
