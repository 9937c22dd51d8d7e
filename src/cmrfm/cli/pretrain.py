"""``cmrfm pretrain``: self-supervised pretraining runs and weight export.

cmrfm pretrain --config configs/pretrain/dino_tiny_cpu.yaml [key=value ...] [--resume]
cmrfm pretrain export RUN --out weights.safetensors [--fp16]
torchrun --nproc_per_node=N -m cmrfm.cli pretrain --config ...   # DDP
"""

from __future__ import annotations

from pathlib import Path

import typer
from typer.core import TyperGroup

OVERRIDES_KEY = "pretrain_overrides"


class _OverridesGroup(TyperGroup):
    """A group whose own invocation takes ``key=value`` overrides (``pretrain x=1``) besides subcommands."""

    def parse_args(self, ctx, args):
        first = next((a for a in args if not a.startswith("-")), None)
        if first is not None and first in self.commands and args[0] == first:
            return super().parse_args(ctx, args)
        overrides = [a for a in args if "=" in a and not a.startswith("-")]
        ctx.meta[OVERRIDES_KEY] = overrides
        return super().parse_args(ctx, [a for a in args if a not in overrides])


pretrain_app = typer.Typer(
    cls=_OverridesGroup,
    invoke_without_command=True,
    help="Self-supervised pretraining (DINO, MAE) of the CMR backbone; export of its weights.",
)


@pretrain_app.callback()
def pretrain(
    ctx: typer.Context,
    config: list[Path] = typer.Option(
        None, "--config", "-c", help="YAML config(s), merged in order; key=value overrides follow."
    ),
    resume: bool = typer.Option(False, "--resume", help="Continue the run in out= from its last checkpoint."),
    print_config: bool = typer.Option(False, "--print-config", help="Print the merged config and exit."),
) -> None:
    """Pretrain a backbone: cmrfm pretrain --config FILE.yaml [key=value ...] [--resume]."""
    if ctx.invoked_subcommand is not None:
        return
    from cmrfm.config import build_config, to_dict
    from cmrfm.pretrain.config import PretrainConfig

    overrides = ctx.meta.get(OVERRIDES_KEY, [])
    cfg = build_config(PretrainConfig, yaml_paths=config or [], overrides=overrides)
    if print_config:
        import yaml

        typer.echo(yaml.safe_dump(to_dict(cfg), sort_keys=False))
        return
    from cmrfm.pretrain.loop import pretrain as run_pretraining

    result = run_pretraining(cfg, resume=resume)
    typer.echo(
        f"done: {result.steps} steps, last loss {result.last_loss:.4f}, "
        f"{result.images_per_s:.1f} images/s, {result.gflops_per_s:.1f} GFLOP/s -> {result.run_dir}"
    )


@pretrain_app.command("export")
def export(
    run: Path = typer.Argument(..., help="Run folder (or checkpoint file) of `cmrfm pretrain`."),
    out: Path = typer.Option(..., "--out", "-o", help="Output .safetensors (card written beside as .json)."),
    fp16: bool = typer.Option(False, "--fp16", help="Store float16 weights (half the size)."),
    which: str = typer.Option("auto", "--which", help="auto (DINO teacher / MAE encoder), teacher, student."),
) -> None:
    """Export a run's backbone as safetensors with a JSON model card."""
    from cmrfm.pretrain.export import export_run

    path, card = export_run(run, out, fp16=fp16, which=which)
    size_mb = path.stat().st_size / 1e6
    typer.echo(f"wrote {path} ({size_mb:.1f} MB, {card['objective']}, {card['steps']} steps) and its card")


def register(app: typer.Typer) -> None:
    """Adds the ``pretrain`` group to the root app."""
    app.add_typer(pretrain_app, name="pretrain")
