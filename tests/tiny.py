"""Tiny fine-tuning configurations shared by the tests (synthetic data, a 2-block 32-wide ViT)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from cmrfm.engine.finetune import FinetuneConfig

#: A ViT small enough for a CPU test to train in seconds.
TINY = {"embed_dim": 32, "depth": 2, "num_heads": 2}


def tiny_config(task: str, out: Path | None = None, **overrides: Any) -> FinetuneConfig:
    """A few-step run of ``task`` on its synthetic data at 32 px (fold 0 of 2), fp32."""
    fields: dict[str, Any] = {"task": task, "synthetic": True, "image_size": 32, "backbone": TINY}
    fields.update(steps=2, batch_size=2, folds=2, fold=0, amp="off")
    if out is not None:
        fields["out"] = str(out)
    fields.update(overrides)
    return FinetuneConfig(**fields)
