"""Typed configuration of a pretraining run (YAML files + ``key=value`` overrides, see cmrfm.config)."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Literal

from cmrfm.engine.optim import OptimConfig
from cmrfm.pretrain.dino import DINOConfig
from cmrfm.pretrain.mae import MAEConfig


@dataclass
class SourceConfig:
    """One image source of the pretraining mixture.

    Attributes:
        kind: ``shards`` (a folder from ``cmrfm data shard``), ``cache`` (a prepared cache from
            ``cmrfm data prepare``; labels ignored), ``simulator`` (:mod:`cmrfm.simulate` on the fly)
            or ``synthetic`` (procedural phantoms, for tests and smoke runs).
        path: Folder of a ``shards`` or ``cache`` source.
        weight: Relative sampling weight in the mixture.
        name: Label used in logs and the model card (defaults to kind + folder name).
    """

    kind: Literal["shards", "cache", "simulator", "synthetic"] = "synthetic"
    path: str = ""
    weight: float = 1.0
    name: str = ""


@dataclass
class DataConfig:
    """The image mixture.

    Attributes:
        sources: Sources and their weights.
        image_size: Every raw image is centre-cropped to a square and resized to this before
            augmentation (crops are then taken from it).
        cache_shards: Shards each process may hold in memory (bounds memory for shard sources).
        synthetic_images: Distinct images a ``synthetic`` source cycles through.
        simulator_items_per_subject: 2D items drawn from each simulated subject (``simulator`` source).
        simulator: Overrides of :class:`cmrfm.simulate.SimConfig` for the ``simulator`` source (e.g.
            ``{imaging: {matrix: [128, 128]}}``). Simulating costs ~0.3-1 s per image on one CPU core,
            so on small machines pre-render a cohort (``cmrfm simulate``) and shard it instead.
    """

    sources: list[SourceConfig] = field(default_factory=lambda: [SourceConfig()])
    image_size: int = 128
    cache_shards: int = 2
    synthetic_images: int = 4096
    simulator_items_per_subject: int = 16
    simulator: dict[str, Any] = field(default_factory=dict)


@dataclass
class ProbeConfig:
    """k-NN probe of the frozen backbone on a small labelled set, run every ``every`` steps.

    Attributes:
        every: Steps between probes (0 disables; the first and last steps are probed when enabled).
        source: ``synthetic`` (phantom shape classes) or ``cache`` (a prepared cache column).
        path: Prepared cache folder for ``source=cache``.
        label: Cache manifest column to classify (``group``, ``view``, ``sequence``, ``phase``).
        max_images: Largest number of labelled images used.
        k: Neighbours of the k-NN vote.
        test_fraction: Fraction of studies (cache) or images (synthetic) held out for testing.
    """

    every: int = 0
    source: Literal["synthetic", "cache"] = "synthetic"
    path: str = ""
    label: str = "group"
    max_images: int = 400
    k: int = 10
    test_fraction: float = 0.3


@dataclass
class PretrainConfig:
    """Everything a pretraining run needs.

    Attributes:
        objective: ``dino`` or ``mae``.
        backbone: ViT preset (``tiny``, ``small``, ``base``).
        model: Overrides of the preset's :class:`~cmrfm.models.vit.ViTConfig` fields.
        dino: DINO settings.
        mae: MAE settings.
        optim: AdamW and schedules.
        data: Image mixture.
        probe: Periodic k-NN probe.
        batch_size: Images per process per step.
        steps: Total optimiser steps. 0 with ``time_limit_min`` > 0 plans them from the budget: the
            speed of the first ``calibration_steps`` steps sets the count so the lr, weight-decay and
            momentum schedules complete within the time limit (for shared or unknown machines).
        calibration_steps: Steps timed to plan ``steps`` when it is 0.
        seed: Seed of initialisation, data order and augmentations.
        precision: ``auto`` (bf16 where measured faster: CUDA with bf16, CPUs with AVX512-BF16/AMX),
            ``fp32`` or ``bf16``.
        device: ``auto`` (CUDA when available), ``cpu`` or ``cuda``.
        compile: Compile the transformer blocks with ``torch.compile`` (fuses the elementwise ops
            around the matmuls; ~10 % faster on a 2-core CPU after a ~15 s compilation).
        threads: Torch intra-op threads per process (0 keeps torch's default).
        out: Run folder (config, CSV log, checkpoints).
        ckpt_every: Steps between checkpoints (the last step is always saved).
        keep_checkpoints: Step-numbered checkpoints kept besides ``last.pt``.
        log_every: Steps between log lines / CSV rows.
        time_limit_min: Stop (after saving a checkpoint) once this many minutes have passed; the run
            resumes later with ``--resume`` (0 = no limit). For fixed-budget runs on shared machines.
        stop_at_step: Stop (after saving a checkpoint) when this step is reached, without changing the
            schedules of ``steps`` (0 = run to the end); e.g. to split a run into sessions.
        init: Backbone weights (``.safetensors`` from ``cmrfm pretrain``'s export, e.g. the shipped
            backbone) to start from instead of a random initialisation: continued pretraining on a
            user's own unlabelled images. The file's architecture must match ``backbone``/``model``;
            the objective's own parts (MAE decoder, DINO heads) start fresh. Empty = random.
    """

    objective: Literal["dino", "mae"] = "dino"
    backbone: str = "tiny"
    model: dict[str, Any] = field(default_factory=dict)
    dino: DINOConfig = field(default_factory=DINOConfig)
    mae: MAEConfig = field(default_factory=MAEConfig)
    optim: OptimConfig = field(default_factory=OptimConfig)
    data: DataConfig = field(default_factory=DataConfig)
    probe: ProbeConfig = field(default_factory=ProbeConfig)
    batch_size: int = 32
    steps: int = 1000
    calibration_steps: int = 20
    seed: int = 0
    precision: Literal["auto", "fp32", "bf16"] = "auto"
    device: Literal["auto", "cpu", "cuda"] = "auto"
    compile: bool = False
    threads: int = 0
    out: str = "runs/pretrain"
    ckpt_every: int = 100
    keep_checkpoints: int = 1
    log_every: int = 10
    time_limit_min: float = 0.0
    stop_at_step: int = 0
    init: str = ""
