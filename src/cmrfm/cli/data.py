"""``cmrfm data ...``: inspect studies, prepare learning caches, write pretraining shards."""

from __future__ import annotations

import json
from pathlib import Path

import typer

data_app = typer.Typer(help="Read, inspect and prepare CMR data.", no_args_is_help=True)


@data_app.command("inspect")
def inspect(
    path: Path = typer.Argument(
        ..., help="A NIfTI/DICOM file, a patient folder, a DICOM folder or a dataset root."
    ),
    as_json: bool = typer.Option(False, "--json", help="Print JSON instead of tables."),
) -> None:
    """Describe every series of the study (or studies) at PATH: shape, spacing, sequence, view, labels."""
    from cmrfm.io.loader import load_studies

    results = load_studies(path)
    single = len(results) == 1 and results[0].source == str(path)
    if single and results[0].error is not None and not as_json:
        from cmrfm.errors import InputError

        raise InputError(path, results[0].error)  # one study asked for: one `error:` line
    summaries = [r.study.summary() for r in results if r.study is not None]
    failures = [{"source": r.source, "error": r.error} for r in results if r.error is not None]
    if as_json:
        typer.echo(json.dumps({"studies": summaries, "failures": failures}, indent=2, default=str))
    else:
        from cmrfm.cli.display import print_study_tables

        print_study_tables(summaries, failures)
    if failures:
        raise typer.Exit(1)


@data_app.command("prepare")
def prepare(
    name: str = typer.Argument(..., help="Dataset adapter: acdc, mnms, emidec, sunnybrook, folder, ..."),
    root: Path = typer.Option(..., "--root", help="Dataset root folder."),
    out: Path = typer.Option(..., "--out", help="Output cache folder (created; refuses to overwrite)."),
    overrides: list[str] = typer.Argument(None, help="Preprocessing overrides as key=value."),
    overwrite: bool = typer.Option(False, "--overwrite", help="Replace an existing cache at OUT."),
) -> None:
    """Preprocess a dataset into a cache of 2D slices/frames with a manifest."""
    from cmrfm.data.prepare import prepare_dataset

    report = prepare_dataset(name, root, out, overrides=overrides or [], overwrite=overwrite)
    typer.echo(report.describe())
    if report.failures:
        raise typer.Exit(1)


@data_app.command("shard")
def shard(
    inputs: list[Path] = typer.Argument(
        ..., help="Prepared caches (cmrfm data prepare) and/or studies, dataset roots or DICOM folders."
    ),
    out: Path = typer.Option(..., "--out", help="Output shard folder (created; refuses to overwrite)."),
    dtype: str = typer.Option("uint8", "--dtype", help="Pixel storage: uint8 or float16."),
    images_per_shard: int = typer.Option(2048, "--images-per-shard", help="Images per shard file."),
    size: int = typer.Option(128, "--size", help="Output side in pixels (0 keeps each image's size)."),
    crop_mm: float = typer.Option(200.0, "--crop-mm", help="Centre field of view cut from raw studies (mm)."),
    overwrite: bool = typer.Option(False, "--overwrite", help="Replace an existing shard folder at OUT."),
) -> None:
    """Write every 2D image of INPUTS into streaming shards for pretraining (labels dropped)."""
    from cmrfm.data.shards import build_shards

    report = build_shards(
        list(inputs), out, dtype, images_per_shard, size, crop_mm, overwrite=overwrite, progress=True
    )
    typer.echo(report.describe())
    if report.failures:
        raise typer.Exit(1)


def register(app: typer.Typer) -> None:
    """Adds the ``data`` group to the root app."""
    app.add_typer(data_app, name="data")
