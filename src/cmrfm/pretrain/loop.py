"""The pretraining loop: one process or a torchrun DDP group, exact resume, logs and probes.

A run folder holds ``config.yaml`` (exactly what ran), ``log.csv`` (loss, lr, wd, images/s, GFLOP/s,
probe results), ``probe.json`` and ``checkpoints/last.pt``. Every random draw of step ``t`` derives from
``(seed, rank, t)``, and checkpoints hold model, teacher, optimiser, schedule position, RNG states and
the data sources' positions, so ``resume=True`` continues bit-for-bit as if never stopped.
"""

from __future__ import annotations

import csv
import json
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager, nullcontext
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import nn

from cmrfm import __version__
from cmrfm.config import save_yaml, to_dict
from cmrfm.engine.checkpoint import CheckpointManager, rng_state, set_rng_state
from cmrfm.engine.optim import apply_schedules, build_adamw, clip_gradients, cosine_schedule, param_groups
from cmrfm.errors import CmrfmError, ConfigError
from cmrfm.models.factory import architecture, build_backbone, load_backbone
from cmrfm.models.vit import ViTConfig, compile_blocks, vit_config
from cmrfm.pretrain.config import PretrainConfig
from cmrfm.pretrain.data import Mixture
from cmrfm.pretrain.dino import DINO
from cmrfm.pretrain.distributed import DistContext, barrier, cleanup, init_distributed
from cmrfm.pretrain.mae import MAE
from cmrfm.pretrain.objective import Objective
from cmrfm.registry import Registry

#: Objective name -> constructor (backbone, run config) -> Objective.
OBJECTIVES: Registry = Registry("pretraining objective")
OBJECTIVES.register("dino")(lambda backbone, cfg: DINO(backbone, cfg.dino))
OBJECTIVES.register("mae")(lambda backbone, cfg: MAE(backbone, cfg.mae))

#: Parameter leaf names exempt from weight decay in every objective.
NO_DECAY = ("pos_embed", "cls_token", "mask_token", "decoder_pos_embed", "decoder_mask_token")
#: Seed-mixing constant separating the per-step torch seed from other streams.
STEP_SEED_SALT = 1_000_003
#: Schedule length used until a time-budgeted run (``steps=0``) has planned its step count.
PROVISIONAL_STEPS = 100_000
#: Fraction of the remaining time budget planned for training (the rest absorbs probes/checkpoints).
BUDGET_SAFETY = 0.95
#: Checkpoint format tag.
CKPT_FORMAT = "cmrfm-pretrain/1"
LOG_COLUMNS = ("step", "loss", "lr", "wd", "images_per_s", "gflops_per_s", "grad_norm", "seconds")


def model_config(cfg: PretrainConfig) -> ViTConfig:
    """The backbone architecture of a run (preset + overrides)."""
    try:
        return vit_config(cfg.backbone, **cfg.model)
    except TypeError as err:
        raise ConfigError(f"model: {err}") from None


def build_objective(cfg: PretrainConfig, load_init: bool = True) -> Objective:
    """Backbone + objective for ``cfg`` (initialised from ``cfg.seed``, the backbone from ``cfg.init``).

    The backbone weights are loaded before the objective is built, so a DINO teacher starts as a
    copy of the loaded student.

    Args:
        cfg: The run configuration.
        load_init: Read ``cfg.init`` (False when a checkpoint will replace every weight anyway, so a
            resumed run does not need the init file any more).

    Raises:
        InputError: ``cfg.init`` is missing, unreadable or for another architecture.
    """
    torch.manual_seed(cfg.seed)
    backbone = build_backbone(model_config(cfg))
    if cfg.init and load_init:
        with torch.random.fork_rng(devices=[]):  # the objective's own parts start as in a fresh run
            loaded, _ = load_backbone(cfg.init, expected=backbone.cfg, img_size=backbone.cfg.img_size)
        backbone.load_state_dict(loaded.state_dict())
    return OBJECTIVES.get(cfg.objective)(backbone, cfg)


def resolve_precision(precision: str, device: torch.device) -> torch.dtype | None:
    """The autocast dtype for ``precision`` on ``device`` (``None`` = fp32).

    ``auto`` picks bf16 on CUDA GPUs that support it and on CPUs with native bf16 matmuls (AVX512-BF16
    or AMX), where benchmarks/bench_backbone.py measured bf16 training ~1.8× faster than fp32.
    """
    if precision == "fp32":
        return None
    if precision == "bf16":
        return torch.bfloat16
    if device.type == "cuda":
        return torch.bfloat16 if torch.cuda.is_bf16_supported() else None
    return torch.bfloat16 if _cpu_has_fast_bf16() else None


def _cpu_has_fast_bf16() -> bool:
    try:
        return bool(torch.ops.mkldnn._is_mkldnn_bf16_supported()) and _cpu_flag("avx512_bf16", "amx_bf16")
    except (AttributeError, RuntimeError):
        return False


def _cpu_flag(*flags: str) -> bool:
    try:
        text = Path("/proc/cpuinfo").read_text()
    except OSError:
        return False
    return any(f in text for f in flags)


def step_generator(seed: int, rank: int, step: int) -> torch.Generator:
    """The generator of step ``step`` on ``rank`` (augmentations, masks)."""
    return torch.Generator().manual_seed((seed * STEP_SEED_SALT + step) * 1009 + rank)


@contextmanager
def _autocast(device: torch.device, dtype: torch.dtype | None) -> Iterator[None]:
    ctx = torch.autocast(device.type, dtype=dtype) if dtype is not None else nullcontext()
    with ctx:
        yield


def _flop_formulas() -> None:
    """Registers FLOP formulas for CPU flash attention, which the flop counter does not know."""
    from torch.utils import flop_counter as fc

    ops = torch.ops.aten
    if ops._scaled_dot_product_flash_attention_for_cpu in fc.flop_registry:
        return

    @fc.register_flop_formula(ops._scaled_dot_product_flash_attention_for_cpu, get_raw=True)
    def _fwd(query, key, value, *args, out_val=None, **kwargs) -> int:
        return fc.sdpa_flop_count(query.shape, key.shape, value.shape)

    @fc.register_flop_formula(ops._scaled_dot_product_flash_attention_for_cpu_backward, get_raw=True)
    def _bwd(grad_out, query, key, value, *args, out_val=None, **kwargs) -> int:
        return fc.sdpa_backward_flop_count(grad_out.shape, query.shape, key.shape, value.shape)


@dataclass
class RunResult:
    """What a finished run reports.

    Attributes:
        run_dir: The run folder.
        steps: Steps completed.
        last_loss: Loss of the last step.
        images_per_s: Mean training throughput (all processes together).
        gflops_per_s: Mean achieved GFLOP/s (all processes together).
        probes: Probe results by step.
    """

    run_dir: Path
    steps: int
    last_loss: float
    images_per_s: float = 0.0
    gflops_per_s: float = 0.0
    probes: dict[int, dict[str, float]] = field(default_factory=dict)


class Trainer:
    """Sets up and runs one pretraining run (see :func:`pretrain`)."""

    def __init__(self, cfg: PretrainConfig, ctx: DistContext, load_init: bool = True) -> None:
        self.cfg, self.ctx = cfg, ctx
        self.run_dir = Path(cfg.out)
        self.ckpt = CheckpointManager(self.run_dir / "checkpoints", keep=cfg.keep_checkpoints)
        if cfg.steps <= 0 and cfg.time_limit_min <= 0:
            raise ConfigError("steps=0 plans the run from a time budget: also set time_limit_min > 0")
        self.objective = build_objective(cfg, load_init).to(ctx.device)
        self.dtype = resolve_precision(cfg.precision, ctx.device)
        groups = param_groups(self.objective, cfg.optim.weight_decay, no_weight_decay=NO_DECAY)
        self.optimizer = build_adamw(groups, cfg.optim)
        self.planned = cfg.steps > 0
        self.set_total_steps(cfg.steps if self.planned else PROVISIONAL_STEPS)
        self.data = Mixture(cfg.data, cfg.seed, ctx.rank, ctx.world_size)
        self.flops_per_step = self.count_flops(0) * ctx.world_size  # before DDP hooks exist
        if cfg.compile:
            compile_blocks(self.objective)  # after FLOP counting, which runs eagerly
        self.model: nn.Module = self.objective
        if ctx.distributed:
            ids = [ctx.device.index] if ctx.device.type == "cuda" else None
            self.model = nn.parallel.DistributedDataParallel(self.objective, device_ids=ids)
        self.start_step = 0
        self.probes: dict[int, dict[str, float]] = {}
        self._probe_set = None

    def set_total_steps(self, total: int) -> None:
        """(Re)builds the lr, weight-decay and objective schedules for a run of ``total`` steps."""
        cfg = self.cfg
        self.total_steps = int(total)
        self.objective.setup(self.total_steps)
        global_batch = cfg.batch_size * self.ctx.world_size
        ref = cfg.optim.lr_ref_batch
        peak = cfg.optim.lr * (global_batch / ref if ref > 0 else 1.0)
        self.lrs = cosine_schedule(peak, cfg.optim.min_lr, self.total_steps, cfg.optim.warmup_steps)
        self.wds = cosine_schedule(cfg.optim.weight_decay, cfg.optim.weight_decay_end, self.total_steps)

    def plan_from_budget(self, done: int, steps_timed: int, seconds: float, elapsed: float) -> None:
        """Fixes ``total_steps`` so the run ends within ``time_limit_min`` at the measured speed."""
        remaining = max(0.0, 60 * self.cfg.time_limit_min - elapsed) * BUDGET_SAFETY
        total = torch.tensor([done + int(remaining * steps_timed / max(seconds, 1e-9))])
        if self.ctx.distributed:
            import torch.distributed as dist

            dist.broadcast(total, src=0)
        self.set_total_steps(max(int(total.item()), done + 1))
        self.planned = True
        self._report(
            f"planned {self.total_steps} steps for the {self.cfg.time_limit_min} min budget "
            f"({steps_timed / max(seconds, 1e-9):.2f} steps/s measured)"
        )

    # ----- checkpoints -------------------------------------------------------------------------
    def state(self, next_step: int) -> dict[str, Any]:
        """Everything needed to continue after ``next_step - 1``."""
        return {
            "format": CKPT_FORMAT,
            "cmrfm_version": __version__,
            "step": next_step,
            "total_steps": self.total_steps,
            "planned": self.planned,
            "objective_name": self.cfg.objective,
            "architecture": architecture(self.objective.backbone.cfg),
            "config": to_dict(self.cfg),
            "objective": self.objective.state_dict(),
            "optimizer": self.optimizer.state_dict(),
            "rng": rng_state(),
            "data": self.data.state_dict(),
            "probes": self.probes,
        }

    def save(self, next_step: int) -> None:
        """Writes a checkpoint (rank 0; data positions are per rank and gathered)."""
        state = self.state(next_step)
        if self.ctx.distributed:
            import torch.distributed as dist

            gathered: list[Any] = [None] * self.ctx.world_size
            dist.all_gather_object(gathered, {"data": state["data"], "rng": state["rng"]})
            state["per_rank"] = gathered
        if self.ctx.is_main:
            self.ckpt.save(state, next_step)
        barrier()

    def resume(self) -> None:
        """Loads ``last.pt`` of the run folder, checking it belongs to the same kind of run."""
        state = self.ckpt.load()
        if state.get("format") != CKPT_FORMAT:
            raise ConfigError(f"{self.ckpt.last}: not a cmrfm pretraining checkpoint")
        mine = architecture(self.objective.backbone.cfg)
        if state["architecture"]["config"] != mine["config"] or state["objective_name"] != self.cfg.objective:
            raise ConfigError(
                f"{self.ckpt.last}: checkpoint is a {state['objective_name']} run of another architecture "
                f"({_arch_diff(state['architecture']['config'], mine['config'])}); "
                "resume with the same config or start a new run folder"
            )
        try:
            self.objective.load_state_dict(state["objective"])
            if state.get("planned", True):
                self.set_total_steps(int(state.get("total_steps", self.cfg.steps)))
                self.planned = True
        except RuntimeError as err:
            raise ConfigError(f"{self.ckpt.last}: weights do not fit this objective ({err})") from None
        self.optimizer.load_state_dict(state["optimizer"])
        per_rank = state.get("per_rank")
        saved_world = len(per_rank) if per_rank else 1
        if saved_world != self.ctx.world_size:
            raise ConfigError(
                f"{self.ckpt.last}: saved by {saved_world} process(es), resumed with {self.ctx.world_size}; "
                "resume with the same number of processes (data positions are per process)"
            )
        mine_state = per_rank[self.ctx.rank] if per_rank else {"data": state["data"], "rng": state["rng"]}
        self.data.load_state_dict(mine_state["data"])
        set_rng_state(mine_state["rng"])
        self.probes = {int(k): v for k, v in state.get("probes", {}).items()}
        self.start_step = int(state["step"])

    # ----- one step ----------------------------------------------------------------------------
    def train_step(self, step: int) -> tuple[float, float]:
        """Runs optimiser step ``step``; returns (loss, grad norm)."""
        cfg, ctx = self.cfg, self.ctx
        torch.manual_seed(step_generator(cfg.seed, ctx.rank, step).initial_seed() + 1)
        gen = step_generator(cfg.seed, ctx.rank, step)
        images = self.data.batch(step, cfg.batch_size)
        batch = self.objective.prepare(images, gen)
        batch = _to_device(batch, ctx.device)
        apply_schedules(self.optimizer, float(self.lrs[step]), float(self.wds[step]))
        with _autocast(ctx.device, self.dtype):
            loss, _ = self.model(batch, step)
        loss.backward()
        self.objective.after_backward(step)
        grad_norm = clip_gradients(self.objective.parameters(), cfg.optim.grad_clip)
        self.optimizer.step()
        self.optimizer.zero_grad(set_to_none=True)
        self.objective.after_step(step)
        value = float(loss.detach())
        if not torch.isfinite(torch.tensor(value)):
            raise CmrfmError(
                f"loss is {value} at step {step}; lower optim.lr, check the data, or resume from the last "
                "checkpoint with precision=fp32"
            )
        return value, grad_norm

    def count_flops(self, step: int) -> float:
        """FLOPs of one training step (forward + backward) on this rank, counted on a scratch copy."""
        from torch.utils.flop_counter import FlopCounterMode

        _flop_formulas()
        gen = step_generator(self.cfg.seed + 1, self.ctx.rank, step)
        images = torch.rand(self.cfg.batch_size, 1, self.cfg.data.image_size, self.cfg.data.image_size)
        batch = _to_device(self.objective.prepare(images, gen), self.ctx.device)
        rng = rng_state()
        center = {k: v.clone() for k, v in self.objective.named_buffers()}
        with FlopCounterMode(display=False) as counter:
            with _autocast(self.ctx.device, self.dtype):
                loss, _ = self.objective(batch, step)
            loss.backward()
        self.objective.zero_grad(set_to_none=True)
        for k, v in self.objective.named_buffers():
            v.copy_(center[k])
        set_rng_state(rng)
        return float(counter.get_total_flops())

    # ----- probe -------------------------------------------------------------------------------
    def probe(self, step: int) -> dict[str, float]:
        """Runs the k-NN probe on the exported backbone (rank 0)."""
        from cmrfm.pretrain.probe import build_probe_set, knn_probe

        if self._probe_set is None:
            self._probe_set = build_probe_set(self.cfg.probe, self.objective.backbone.cfg.img_size)
        result = knn_probe(
            self.objective.export_backbone(), self._probe_set, self.cfg.probe.k, self.ctx.device, self.dtype
        )
        result["probe_set"] = self._probe_set.name  # type: ignore[assignment]
        self.probes[step] = result
        (self.run_dir / "probe.json").write_text(json.dumps(self.probes, indent=1))
        return result

    # ----- the run -----------------------------------------------------------------------------
    def run(self) -> RunResult:
        """Trains from ``start_step`` to ``total_steps`` (or ``stop_at_step`` / the time limit)."""
        cfg, ctx = self.cfg, self.ctx
        log = _CsvLog(self.run_dir / "log.csv") if ctx.is_main else None
        probe_every = cfg.probe.every
        if ctx.is_main and probe_every and self.start_step == 0 and 0 not in self.probes:
            self._report(f"probe before training: {self.probe(0)}")
        loss = float("nan")
        images_total, seconds_total = 0, 0.0
        progress = _progress(ctx.is_main, self.total_steps, self.start_step)
        t_last, n_last = time.perf_counter(), 0
        t_start = t_last
        completed = step = self.start_step
        calibrate_at = self.start_step + max(1, cfg.calibration_steps)
        while step < self._end():
            loss, grad_norm = self.train_step(step)
            n_last += 1
            done = step + 1
            if not self.planned and done == calibrate_at:
                elapsed = time.perf_counter() - t_start
                self.plan_from_budget(done, done - self.start_step, elapsed, elapsed)
                if progress is not None:
                    progress.set_total(self.total_steps)
            end = self._end()
            if progress is not None:
                progress.advance(loss)
            if done % cfg.log_every == 0 or done == end:
                now = time.perf_counter()
                dt = now - t_last
                imgs = n_last * cfg.batch_size * ctx.world_size
                images_total, seconds_total = images_total + imgs, seconds_total + dt
                row = {
                    "step": done,
                    "loss": loss,
                    "lr": float(self.lrs[step]),
                    "wd": float(self.wds[step]),
                    "images_per_s": imgs / dt,
                    "gflops_per_s": n_last * (self.flops_per_step or 0) / dt / 1e9,
                    "grad_norm": grad_norm,
                    "seconds": dt,
                }
                if log is not None:
                    log.write(row)
                    if progress is None:
                        self._report(
                            f"step {done}/{self.total_steps} loss {loss:.4f} lr {row['lr']:.2e} "
                            f"{row['images_per_s']:.1f} img/s {row['gflops_per_s']:.0f} GFLOP/s"
                        )
                t_last, n_last = time.perf_counter(), 0
            completed = done
            out_of_time = self._out_of_time(t_start)
            last = done == self.total_steps
            if ctx.is_main and probe_every and (done % probe_every == 0 or last):
                result = self.probe(done)
                self._report(f"probe at step {done}: {result}")
            if done % cfg.ckpt_every == 0 or done == end or out_of_time:
                self.save(done)
            t_last = time.perf_counter() if done % cfg.log_every == 0 else t_last
            step = done
            if out_of_time:
                self._report(
                    f"time limit of {cfg.time_limit_min} min reached at step {done}; resume with --resume"
                )
                break
        if progress is not None:
            progress.close()
        if ctx.distributed:
            self.check_replicas()
        return RunResult(
            run_dir=self.run_dir,
            steps=completed,
            last_loss=loss,
            images_per_s=images_total / seconds_total if seconds_total else 0.0,
            gflops_per_s=(images_total / (cfg.batch_size * ctx.world_size))
            * (self.flops_per_step or 0)
            / max(seconds_total, 1e-9)
            / 1e9,
            probes=self.probes,
        )

    def _end(self) -> int:
        """The step this session stops at (``stop_at_step`` or the end of the schedule)."""
        stop = self.cfg.stop_at_step
        return min(self.total_steps, stop) if stop > 0 else self.total_steps

    def _out_of_time(self, t_start: float) -> bool:
        """Whether the wall-clock budget is spent (decided on rank 0, shared with every rank)."""
        if self.cfg.time_limit_min <= 0:
            return False
        flag = torch.tensor([float(time.perf_counter() - t_start > 60 * self.cfg.time_limit_min)])
        if self.ctx.distributed:
            import torch.distributed as dist

            dist.broadcast(flag, src=0)
        return bool(flag.item())

    def check_replicas(self) -> list[float]:
        """Checks every process holds the same student weights; writes ``replicas.json`` (rank 0).

        Raises:
            RuntimeError: When the replicas have drifted apart (a DDP bug, never expected).
        """
        import torch.distributed as dist

        with torch.no_grad():
            total = sum(float(p.double().sum()) for p in self.objective.parameters())
        sums: list[Any] = [None] * self.ctx.world_size
        dist.all_gather_object(sums, total)
        if self.ctx.is_main:
            (self.run_dir / "replicas.json").write_text(json.dumps({"param_sums": sums}))
        if len(set(sums)) != 1:
            raise RuntimeError(f"DDP replicas differ after training: parameter sums {sums}")
        return sums

    def _report(self, text: str) -> None:
        if self.ctx.is_main:
            print(text, flush=True)


def _arch_diff(a: dict[str, Any], b: dict[str, Any]) -> str:
    return ", ".join(
        f"{k}: checkpoint {a.get(k)!r} vs config {b.get(k)!r}" for k in b if a.get(k) != b.get(k)
    )


def _to_device(batch: dict, device: torch.device) -> dict:
    if device.type == "cpu":
        return batch
    return {
        k: v.to(device, non_blocking=True) if isinstance(v, torch.Tensor) else v for k, v in batch.items()
    }


class _CsvLog:
    """Appends rows to a CSV file (header written once; resumed runs append)."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self.new = not path.exists()

    def write(self, row: dict[str, Any]) -> None:
        with open(self.path, "a", newline="") as handle:
            writer = csv.DictWriter(handle, fieldnames=LOG_COLUMNS)
            if self.new:
                writer.writeheader()
                self.new = False
            writer.writerow({k: (f"{v:.6g}" if isinstance(v, float) else v) for k, v in row.items()})


class _Progress:
    """A rich progress bar showing the step and loss (only on a terminal)."""

    def __init__(self, total: int, start: int) -> None:
        from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeRemainingColumn

        self.bar = Progress(
            TextColumn("pretrain"),
            BarColumn(),
            MofNCompleteColumn(),
            TextColumn("loss {task.fields[loss]:.4f}"),
            TimeRemainingColumn(),
        )
        self.task = self.bar.add_task("pretrain", total=total, completed=start, loss=float("nan"))
        self.bar.start()

    def advance(self, loss: float) -> None:
        self.bar.update(self.task, advance=1, loss=loss)

    def set_total(self, total: int) -> None:
        self.bar.update(self.task, total=total)

    def close(self) -> None:
        self.bar.stop()


def _progress(is_main: bool, total: int, start: int) -> _Progress | None:
    return _Progress(total, start) if is_main and sys.stderr.isatty() else None


def pretrain(cfg: PretrainConfig, resume: bool = False) -> RunResult:
    """Runs (or resumes) a pretraining run; under torchrun every process calls this.

    Args:
        cfg: The run configuration (its ``out`` folder receives config, logs and checkpoints).
        resume: Continue from ``out/checkpoints/last.pt`` (a fresh start when there is none).

    Raises:
        ConfigError: Resuming a checkpoint of another architecture/objective, or a bad config.
    """
    ctx = init_distributed(cfg.device)
    try:
        if cfg.threads > 0:
            torch.set_num_threads(cfg.threads)
        run_dir = Path(cfg.out)
        if ctx.is_main:
            run_dir.mkdir(parents=True, exist_ok=True)
            if not resume and (run_dir / "checkpoints" / CheckpointManager.LAST).exists():
                raise ConfigError(f"{run_dir} already holds a run; pass --resume or choose another out=")
            save_yaml(cfg, run_dir / "config.yaml")
        barrier()
        resuming = resume and (run_dir / "checkpoints" / CheckpointManager.LAST).exists()
        trainer = Trainer(cfg, ctx, load_init=not resuming)
        if resume and trainer.ckpt.exists():
            trainer.resume()
            trainer._report(f"resumed from step {trainer.start_step}")
        result = trainer.run()
        barrier()  # every rank done with collectives before the group is torn down
        return result
    finally:
        cleanup()
