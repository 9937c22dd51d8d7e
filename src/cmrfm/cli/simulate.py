"""``cmrfm simulate``: write a synthetic CMR cohort (NIfTI + JSON ground truth, optional DICOM)."""

from __future__ import annotations

from pathlib import Path

import typer


def _split(values: list[str] | None) -> list[str]:
    """Accepts repeated options and comma-separated lists alike."""
    out: list[str] = []
    for value in values or []:
        out += [v.strip() for v in value.split(",") if v.strip()]
    return out


def simulate(
    subjects: int = typer.Option(..., "--subjects", "-n", help="Number of subjects to simulate."),
    out: Path = typer.Option(..., "--out", "-o", help="Output cohort folder (created)."),
    seed: int = typer.Option(0, "--seed", help="Cohort seed: the same seed gives identical data."),
    pathology: list[str] = typer.Option(
        None,
        "--pathology",
        "-p",
        help="Groups to cycle through: NOR, MINF, DCM, HCM, ARV (repeat or comma-separate).",
    ),
    sequences: list[str] = typer.Option(
        None, "--sequences", help="cine, lge, t1map, t2map (default: cine,lge)."
    ),
    views: list[str] = typer.Option(
        None, "--views", help="Cine views: sax, 2ch, 3ch, 4ch (default: sax,2ch,4ch)."
    ),
    frames: int = typer.Option(None, "--frames", help="Cine frames per cycle (default 25)."),
    dicom: bool = typer.Option(False, "--dicom", help="Also write DICOM series under OUT/dicom."),
    overwrite: bool = typer.Option(False, "--overwrite", help="Write into a non-empty OUT."),
    overrides: list[str] = typer.Argument(
        None, help="Simulator settings as key=value (e.g. imaging.matrix=[256,256])."
    ),
) -> None:
    """Simulate a cohort of CMR studies with labels, landmarks, volumes and artefact grades."""
    from rich.progress import Progress

    from cmrfm.simulate.cohort import write_cohort
    from cmrfm.simulate.generator import make_config

    items = list(overrides or [])
    if _split(sequences):
        items.append(f"sequences=[{','.join(_split(sequences))}]")
    if _split(views):
        items.append(f"views=[{','.join(_split(views))}]")
    if frames is not None:
        items.append(f"n_frames={frames}")
    config = make_config(items)
    with Progress(transient=True) as bar:
        task = bar.add_task("simulating", total=subjects)
        folders = write_cohort(
            out,
            subjects,
            seed=seed,
            config=config,
            pathologies=_split(pathology),
            dicom=dicom,
            overwrite=overwrite,
            progress=lambda i, name: bar.update(task, advance=1, description=name),
        )
    typer.echo(f"wrote {len(folders)} simulated subject(s) to {out}")


def register(app: typer.Typer) -> None:
    """Adds the ``simulate`` command to the root app."""
    app.command("simulate")(simulate)
