"""One fine-tuning loop for every task: the engine knows only the :class:`~cmrfm.tasks.base.Task` API.

``finetune(cfg)`` builds the task, its data split (patient-level fold, optional few-shot subset), the
backbone (pretrained weights or from scratch) and the task head; trains for a fixed number of steps
with AdamW, cosine schedules, layer-wise lr decay and bf16 autocast where it helps; checkpoints
atomically so ``resume=true`` continues exactly; evaluates on the held-out subjects; and exports the
fine-tuned model (backbone + head) as safetensors with a model card.
"""

from __future__ import annotations

import contextlib
import csv
import json
import time
from collections.abc import Iterator
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Any, Literal

import torch
from torch.utils.data import DataLoader, Dataset, Sampler

from cmrfm import __version__, metrics
from cmrfm.config import merge_into, save_yaml, to_dict
from cmrfm.data.splits import fewshot_subset, kfold_splits
from cmrfm.engine.checkpoint import (
    CheckpointManager,
    load_float_state,
    rng_state,
    save_weights,
    set_rng_state,
)
from cmrfm.engine.optim import (
    OptimConfig,
    apply_schedules,
    build_adamw,
    clip_gradients,
    cosine_schedule,
    param_groups,
)
from cmrfm.errors import ConfigError, InputError
from cmrfm.models.factory import architecture, build_backbone, check_architecture, load_backbone
from cmrfm.models.vit import ViTConfig, compile_blocks
from cmrfm.tasks import TASKS
from cmrfm.tasks.base import BaselineModel, EvalResult, Task, TaskData, TaskModel
from cmrfm.tasks.context import expand_image_convs, expand_input_channels

Mode = Literal["full", "frozen", "linear"]

#: Format tag in the card of a fine-tuned task model.
TASK_MODEL_FORMAT = "cmrfm-task/1"
#: Task settings added after models were shipped, with the value every earlier model was built
#: with: a card that lacks one loads with this value, not with today's default.
LEGACY_TASK_OPTIONS: dict[str, Any] = {"conv_skip_stages": 0}


@dataclass
class FinetuneConfig:
    """Everything a fine-tuning run needs; every field settable as ``key=value``.

    Attributes:
        task: Task id (``cmrfm tasks`` lists them).
        model: ``vit`` (backbone + task head) or ``baseline`` (the task's conventional model:
            DynUNet for dense tasks, a small CNN for classification) for matched-budget comparisons.
        init: Pretrained backbone (.safetensors), or another task's fine-tuned model (its backbone
            plus every head tensor of matching name and shape); ``None`` trains from scratch.
        preset: Backbone preset when training from scratch.
        backbone: Architecture overrides of the preset when training from scratch (e.g. ``depth``).
        image_size: Training image side (positional embeddings are resized from the backbone's).
        mode: ``full`` (all weights, layer-wise lr decay), ``frozen`` (backbone frozen, full head) or
            ``linear`` (backbone frozen; the task's linear head).
        steps: Optimiser steps.
        batch_size: Items per step.
        optim: AdamW and schedule settings.
        folds: Number of cross-validation folds (patient level, stratified).
        fold: Held-out fold; ``-1`` trains on every subject (no evaluation split).
        k_subjects: Few-shot: train on this many subjects of the training folds (0 = all).
        eval_unused: Few-shot: evaluate on every subject the run does not train on (the held-out
            fold plus the rest of the fold's training part), about 4× more subjects than the
            held-out fold alone at 5 folds, for tighter estimates of small-k runs.
        seed: Seed for splits, sampling, initialisation and augmentation.
        amp: ``auto`` (bf16 where measured faster), ``bf16`` or ``off``.
        compile: Compile the backbone's transformer blocks with ``torch.compile`` (~10 % faster
            training on a 2-core CPU after a ~15 s compilation).
        ckpt_every: Checkpoint interval in steps.
        log_every: Log interval in steps.
        out: Run folder.
        resume: Continue from ``out/checkpoints/last.pt``.
        synthetic: Use the task's tiny synthetic corpus (smoke runs and tests).
        num_workers: DataLoader workers.
        task_options: Task-specific settings, merged into the task's config dataclass.
        export_fp16: Store exported weights in fp16.
    """

    task: str = ""
    model: Literal["vit", "baseline"] = "vit"
    init: str | None = None
    preset: str = "tiny"
    backbone: dict[str, Any] = field(default_factory=dict)
    image_size: int = 128
    mode: Mode = "full"
    steps: int = 1000
    batch_size: int = 16
    optim: OptimConfig = field(
        default_factory=lambda: OptimConfig(
            lr=3e-4,
            lr_ref_batch=0,
            min_lr=1e-6,
            warmup_steps=50,
            weight_decay=0.05,
            weight_decay_end=0.05,
            grad_clip=1.0,
            layer_decay=0.75,
        )
    )
    folds: int = 5
    fold: int = 0
    k_subjects: int = 0
    eval_unused: bool = False
    seed: int = 0
    amp: Literal["auto", "bf16", "off"] = "auto"
    compile: bool = False
    ckpt_every: int = 200
    log_every: int = 20
    out: str = "runs/finetune"
    resume: bool = False
    synthetic: bool = False
    num_workers: int = 0
    task_options: dict[str, Any] = field(default_factory=dict)
    export_fp16: bool = True


@dataclass
class RunResult:
    """What a fine-tuning run produced."""

    out: Path
    weights: Path
    eval: EvalResult | None
    train_subjects: list[str]
    eval_subjects: list[str]
    seconds: float
    steps: int


def build_task(task_id: str, options: dict[str, Any] | None = None) -> Task:
    """Instantiates a registered task with its config plus ``options`` overrides."""
    cls = TASKS.get(task_id)
    config = cls.config_cls()
    if options:
        config = merge_into(config, options, prefix="task_options.")
    return cls(config)


def split_subjects(data: TaskData, cfg: FinetuneConfig) -> tuple[list[str], list[str]]:
    """Training and evaluation subject ids for the configured fold and few-shot size.

    The task's ``train_only`` subjects (e.g. simulated) join the training side of every split.
    """
    if cfg.fold < 0:
        train, held_out = list(data.subjects), []
    else:
        if not 0 <= cfg.fold < cfg.folds:
            raise ConfigError(f"fold={cfg.fold} outside 0..{cfg.folds - 1} (or -1 for all subjects)")
        split = kfold_splits(data.subjects, data.strata, k=cfg.folds, seed=cfg.seed)[cfg.fold]
        train, held_out = list(split.train), list(split.val)
    if cfg.eval_unused and cfg.k_subjects <= 0:
        raise ConfigError("eval_unused=true evaluates on what a few-shot run leaves out: set k_subjects")
    if cfg.k_subjects > 0:
        strata = dict(zip(data.subjects, data.strata, strict=True))
        subset = fewshot_subset(train, [strata[s] for s in train], cfg.k_subjects, seed=cfg.seed)
        if cfg.eval_unused:
            chosen = set(subset)
            held_out += [s for s in train if s not in chosen]
        train = subset
    return [*train, *data.train_only], list(held_out)


def autocast_context(device: torch.device, amp: str) -> contextlib.AbstractContextManager:
    """bf16 autocast when asked (``bf16``) or judged faster (``auto``: CUDA, or CPUs with bf16 units)."""
    use = amp == "bf16" or (amp == "auto" and (device.type == "cuda" or _cpu_has_bf16()))
    if not use:
        return contextlib.nullcontext()
    return torch.autocast(device.type, dtype=torch.bfloat16)


def _cpu_has_bf16() -> bool:
    try:
        flags = Path("/proc/cpuinfo").read_text()
    except OSError:
        return False
    return "avx512_bf16" in flags or "amx_bf16" in flags


def build_model(task: Task, cfg: FinetuneConfig) -> tuple[TaskModel | BaselineModel, dict[str, Any]]:
    """Backbone (pretrained or fresh) plus the task head, frozen as the mode asks; or the baseline."""
    card: dict[str, Any] = {}
    if cfg.model == "baseline":
        if cfg.init or cfg.mode != "full":
            raise ConfigError("model=baseline trains from scratch: leave init empty and mode=full")
        return BaselineModel(task, task.build_baseline(cfg.image_size)), card
    if cfg.init and _is_task_model(cfg.init):
        return _transfer_from_task_model(task, cfg)
    channels = getattr(task, "input_channels", 1)
    grow = _channel_init(task)
    if cfg.init:
        backbone, card = load_backbone(cfg.init)
        backbone = expand_input_channels(backbone, channels, grow)
    else:
        backbone = build_backbone(
            cfg.preset, **{"img_size": cfg.image_size, **cfg.backbone, "in_chans": channels}
        )
    bcfg: ViTConfig = backbone.cfg
    linear = cfg.mode == "linear"
    head = task.build_head(bcfg.embed_dim, len(bcfg.levels()), bcfg.patch_size, linear=linear)
    if getattr(head, "frozen_prefix", ""):
        raise ConfigError(
            f"{task.info.id}: this head keeps its {head.frozen_prefix.rstrip('.')} frozen, so it must start "
            "from a task model that has one (e.g. --init weights/lge-seg.safetensors for head=scar)"
        )
    if cfg.mode in ("frozen", "linear"):
        backbone.requires_grad_(False)
    return TaskModel(task, backbone, head), card


def _channel_init(task: Task) -> str:
    """How a 1-channel init grows to the task's input channels (``task_options.context_init``).

    The task's config validates the value; tasks without the option read one channel.
    """
    return getattr(task.config, "context_init", "zero")


def _is_task_model(path: str | Path) -> bool:
    from cmrfm.engine.checkpoint import load_card

    return load_card(path).get("format") == TASK_MODEL_FORMAT


def _transfer_from_task_model(task: Task, cfg: FinetuneConfig) -> tuple[TaskModel, dict[str, Any]]:
    """Starts from another task's fine-tuned model: its backbone and the matching head tensors.

    Every head tensor whose name and shape match this task's head is copied (e.g. a cine
    ``sax-seg`` decoder for ``lge-seg``); the rest (the output layers, with another class count)
    start fresh.
    """
    source, source_card = load_task_model(cfg.init)
    if not isinstance(source, TaskModel) or source_card.get("backbone_stored") is False:
        raise ConfigError(
            f"init={cfg.init}: this {source_card['task']!r} model stores no ViT backbone, so it cannot "
            f"initialise {task.info.id!r}; use a pretrained backbone or another task model"
        )
    channels = getattr(task, "input_channels", 1)
    grow = _channel_init(task)
    backbone = expand_input_channels(source.backbone, channels, grow)
    bcfg: ViTConfig = backbone.cfg
    head = task.build_head(bcfg.embed_dim, len(bcfg.levels()), bcfg.patch_size, linear=cfg.mode == "linear")
    own = head.state_dict()
    source_head = expand_image_convs(source.head.state_dict(), own, channels, grow)
    matched = matching_head_tensors(own, source_head, getattr(head, "transfer_prefix", ""))
    frozen = getattr(head, "frozen_prefix", "")
    missing = [k for k in own if frozen and k.startswith(frozen) and k not in matched]
    if missing:
        source_options = card_task_options(source_card)
        raise ConfigError(
            f"init={cfg.init}: {len(missing)} tensors of the frozen {frozen.rstrip('.')} have no match in "
            f"the {source_card['task']!r} model (e.g. {missing[0]}); build this head like that model's "
            f"(its conv_skip_stages={source_options.get('conv_skip_stages')}) or let the decoder train"
        )
    head.load_state_dict(matched, strict=False)
    if cfg.mode in ("frozen", "linear"):
        backbone.requires_grad_(False)
    card = {
        "objective": f"{source_card['task']} ({source_card.get('init', 'unknown')})",
        "transfer": {
            "from_task": source_card["task"],
            "head_tensors_transferred": len(matched),
            "head_tensors": len(own),
        },
    }
    return TaskModel(task, backbone, head), card


def matching_head_tensors(
    own: dict[str, torch.Tensor], source: dict[str, torch.Tensor], prefix: str = ""
) -> dict[str, torch.Tensor]:
    """Source head tensors for each own tensor of the same name (after ``prefix``) and shape.

    A head that wraps a segmentation decoder under ``decoder.`` declares ``transfer_prefix =
    "decoder."`` and receives a segmentation model's decoder tensors.
    """
    matched = {}
    for key, value in own.items():
        name = key[len(prefix) :] if prefix and key.startswith(prefix) else key
        if name in source and source[name].shape == value.shape:
            matched[key] = source[name]
    return matched


class StepBatchSampler(Sampler[list[int]]):
    """Batch indices as a pure function of (seed, step): resuming at any step sees the same data.

    Args:
        num_items: Dataset length.
        batch_size: Items per batch.
        seed: Run seed.
        start: First step to yield.
        stop: Step to stop before.
    """

    def __init__(self, num_items: int, batch_size: int, seed: int, start: int, stop: int) -> None:
        if num_items == 0:
            raise ConfigError("the training dataset is empty")
        self.num_items, self.batch_size, self.seed = num_items, batch_size, seed
        self.start, self.stop = start, stop

    def __iter__(self) -> Iterator[list[int]]:
        for step in range(self.start, self.stop):
            g = torch.Generator().manual_seed(self.seed * 1_000_003 + step)
            yield torch.randint(self.num_items, (self.batch_size,), generator=g).tolist()

    def __len__(self) -> int:
        return self.stop - self.start


def model_architecture(model: TaskModel | BaselineModel, image_size: int | None = None) -> dict[str, Any]:
    """The card's ``architecture`` entry: the ViT config, or the baseline kind and input size."""
    if isinstance(model, BaselineModel):
        return {"name": "baseline", "task": model.task.info.id, "image_size": image_size}
    return architecture(model.backbone.cfg)


def _optimizer(model: TaskModel | BaselineModel, cfg: FinetuneConfig) -> torch.optim.Optimizer:
    if isinstance(model, BaselineModel):
        return build_adamw(param_groups(model, cfg.optim.weight_decay), cfg.optim)
    backbone = model.backbone
    groups = param_groups(
        model,
        cfg.optim.weight_decay,
        layer_decay=cfg.optim.layer_decay if cfg.mode == "full" else 1.0,
        no_weight_decay=backbone.no_weight_decay(),
        layer_id=backbone.layer_id,
        num_layers=backbone.cfg.depth,
        prefix_to_strip="backbone.",
    )
    return build_adamw(groups, cfg.optim)


def write_csv(path: Path, rows: list[dict[str, Any]]) -> None:
    """Writes dict rows as CSV (union of keys as columns); nothing for no rows."""
    if not rows:
        return
    keys = list(dict.fromkeys(k for row in rows for k in row))
    with path.open("w", newline="") as handle:
        writer = csv.DictWriter(handle, fieldnames=keys)
        writer.writeheader()
        writer.writerows(rows)


def train_steps(
    model: TaskModel | BaselineModel,
    dataset: Dataset,
    cfg: FinetuneConfig,
    out: Path,
    progress: bool = True,
) -> int:
    """Runs the optimisation (resuming from ``out/checkpoints`` when asked); returns steps done."""
    task = model.task
    optimizer = _optimizer(model, cfg)
    lrs = cosine_schedule(cfg.optim.lr, cfg.optim.min_lr, cfg.steps, cfg.optim.warmup_steps)
    wds = cosine_schedule(cfg.optim.weight_decay, cfg.optim.weight_decay_end, cfg.steps, 0)
    ckpt = CheckpointManager(out / "checkpoints", keep=0)
    start = 0
    if cfg.resume and ckpt.exists():
        state = ckpt.load()
        if state.get("architecture") != model_architecture(model, cfg.image_size):
            raise InputError(ckpt.last, "checkpoint is of another architecture than this run's backbone")
        model.load_state_dict(state["model"])
        optimizer.load_state_dict(state["optimizer"])
        set_rng_state(state["rng"])
        start = state["step"]
    if cfg.compile:
        compile_blocks(model)
    device = torch.device("cpu")
    log_path = out / "train_log.csv"
    log = log_path.open("a" if start else "w")
    if not start:
        log.write("step,loss,lr,items_per_s\n")
    sampler = StepBatchSampler(len(dataset), cfg.batch_size, cfg.seed, start, cfg.steps)
    batches = iter(
        DataLoader(
            dataset,
            batch_sampler=sampler,
            collate_fn=task.collate,
            num_workers=cfg.num_workers,
            generator=torch.Generator().manual_seed(cfg.seed + start),  # keeps the global RNG untouched
        )
    )
    model.train()
    if cfg.mode in ("frozen", "linear") and isinstance(model, TaskModel):
        model.backbone.eval()
    from rich.progress import Progress

    tick = time.perf_counter()
    with Progress(disable=not progress, transient=True) as bar:
        job = bar.add_task(f"fine-tune {task.info.id}", total=cfg.steps, completed=start)
        for step in range(start, cfg.steps):
            batch = next(batches)
            apply_schedules(optimizer, float(lrs[step]), float(wds[step]))
            with autocast_context(device, cfg.amp):
                outputs = model(batch)
            loss = task.loss(outputs, batch)
            if not torch.isfinite(loss):
                raise RuntimeError(
                    f"loss became {float(loss)} at step {step}; lower optim.lr or check the data"
                )
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            clip_gradients(model.parameters(), cfg.optim.grad_clip)
            optimizer.step()
            bar.advance(job)
            done = step + 1
            if done % cfg.log_every == 0 or done == cfg.steps:
                rate = cfg.log_every * cfg.batch_size / max(time.perf_counter() - tick, 1e-9)
                log.write(f"{done},{float(loss.detach()):.5f},{lrs[step]:.3e},{rate:.1f}\n")
                log.flush()
                tick = time.perf_counter()
            if done % cfg.ckpt_every == 0 and done < cfg.steps:
                ckpt.save(
                    {
                        "model": model.state_dict(),
                        "optimizer": optimizer.state_dict(),
                        "rng": rng_state(),
                        "step": done,
                        "architecture": model_architecture(model, cfg.image_size),
                    },
                    done,
                )
    log.close()
    return cfg.steps


#: State-dict prefix of the backbone, left out of features-only heads' weight files.
UNUSED_BACKBONE_PREFIX = "backbone."


def export_model(
    model: TaskModel | BaselineModel,
    path: Path,
    card: dict[str, Any],
    fp16: bool,
    image_size: int | None = None,
) -> Path:
    """Saves backbone + head (or baseline) weights as safetensors with a task model card."""
    full = {
        "format": TASK_MODEL_FORMAT,
        "cmrfm_version": __version__,
        "task": model.task.info.id,
        "architecture": model_architecture(model, image_size),
        "classes": list(model.task.info.classes),
        "task_config": to_dict(model.task.config),
        **card,
    }
    state = model.state_dict()
    if not getattr(model.task, "uses_images", True):
        # a features-only head never runs its backbone: ship the head alone (kilobytes, not MB)
        state = {k: v for k, v in state.items() if not k.startswith(UNUSED_BACKBONE_PREFIX)}
        full["backbone_stored"] = False
    return save_weights(state, path, full, fp16=fp16)


def card_task_options(card: dict[str, Any]) -> dict[str, Any]:
    """A card's task settings, with :data:`LEGACY_TASK_OPTIONS` for those it predates."""
    options = dict(card.get("task_config") or {})
    known = {f.name for f in fields(TASKS.get(card["task"]).config_cls)}
    for key, value in LEGACY_TASK_OPTIONS.items():
        if key in known and key not in options:
            options[key] = value
    return options


def load_task_model(path: str | Path) -> tuple[TaskModel | BaselineModel, dict[str, Any]]:
    """Loads a model written by :func:`export_model`; clear errors for other files or tasks."""
    from cmrfm.engine.checkpoint import load_weights

    tensors, card = load_weights(path)
    if card.get("format") != TASK_MODEL_FORMAT or "task" not in card:
        raise InputError(path, "not a cmrfm task model (its card has no task; is it a backbone?)")
    task = build_task(card["task"], card_task_options(card))
    arch = card.get("architecture") or {}
    if arch.get("name") == "baseline":
        model: TaskModel | BaselineModel = BaselineModel(task, task.build_baseline(int(arch["image_size"])))
    else:
        vit_cfg = check_architecture(card, None, path)
        backbone = build_backbone(vit_cfg)
        linear = card.get("mode") == "linear"
        head = task.build_head(vit_cfg.embed_dim, len(vit_cfg.levels()), vit_cfg.patch_size, linear=linear)
        model = TaskModel(task, backbone, head)
    may_lack = UNUSED_BACKBONE_PREFIX if card.get("backbone_stored") is False else None
    load_float_state(model, tensors, path, f"task {card['task']!r}", may_lack=may_lack)
    model.eval()
    return model, card


def finetune(cfg: FinetuneConfig, progress: bool = True) -> RunResult:
    """Runs one fine-tuning job as configured and returns where its outputs are."""
    if not cfg.task:
        raise ConfigError("no task given: set task=<id> (see `cmrfm tasks`)")
    started = time.perf_counter()
    torch.manual_seed(cfg.seed)
    task = build_task(cfg.task, cfg.task_options)
    data = task.synthetic_data() if cfg.synthetic else task.load_data()
    train_ids, eval_ids = split_subjects(data, cfg)
    if not train_ids:
        raise ConfigError("no training subjects after splitting; check fold/k_subjects")
    out = Path(cfg.out)
    if out.exists() and any(out.iterdir()) and not cfg.resume:
        if (out / "checkpoints" / "last.pt").exists() or (out / "model.safetensors").exists():
            raise ConfigError(f"{out} already holds a run; pass resume=true or choose another out=")
    out.mkdir(parents=True, exist_ok=True)
    save_yaml(cfg, out / "config.yaml")
    model, init_card = build_model(task, cfg)
    train_set = data.make_dataset(train_ids, True)
    exact = task.fit_exactly(model, train_set)
    steps = 0 if exact else train_steps(model, train_set, cfg, out, progress=progress)
    result = None
    if eval_ids:
        result = task.evaluate(model, data.make_dataset(eval_ids, False), batch_size=cfg.batch_size)
        (out / "metrics.json").write_text(
            json.dumps({"metrics": result.metrics, "intervals": result.intervals}, indent=2)
        )
        write_csv(out / "per_subject.csv", result.per_subject)
    seconds = time.perf_counter() - started
    card = {
        "mode": cfg.mode,
        "model": cfg.model,
        "init": init_card.get("objective", "scratch") if cfg.init else "scratch",
        "init_weights": Path(cfg.init).name if cfg.init else None,
        **({"transfer": init_card["transfer"]} if "transfer" in init_card else {}),
        "data": data.description,
        "train_subjects": len(train_ids),
        "eval_subjects": len(eval_ids),
        "steps": steps,
        **({"solver": "exact fit of the head (no gradient steps)"} if exact else {}),
        "seed": cfg.seed,
        "fold": cfg.fold,
        "metrics": None if result is None else result.metrics,
        "train_seconds": round(seconds, 1),
    }
    if result is not None and task.info.kind == "segmentation":
        # out-of-distribution threshold for study analysis, from the held-out volumes' entropies
        ood = metrics.entropy_threshold([row.get("mean_entropy") for row in result.per_subject])
        if ood is not None:
            card["ood"] = ood
    weights = export_model(model, out / "model.safetensors", card, cfg.export_fp16, cfg.image_size)
    return RunResult(out, weights, result, train_ids, eval_ids, seconds, steps)
