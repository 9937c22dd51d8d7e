"""Rich tables for the CLI (kept apart from the commands so they stay thin)."""

from __future__ import annotations

import sys
from typing import Any

from rich.console import Console
from rich.table import Table

#: Width used when output is not a terminal (pipes, logs), so tables are not squeezed to 80 columns.
PIPE_WIDTH = 160


def console() -> Console:
    """A console that keeps tables readable when output goes to a pipe or a file."""
    return Console() if sys.stdout.isatty() else Console(width=PIPE_WIDTH)


def print_study_tables(summaries: list[dict[str, Any]], failures: list[dict[str, Any]]) -> None:
    """Prints one table per study (a row per series), then the failures."""
    out = console()
    for summary in summaries:
        clinical = ", ".join(f"{k}={v}" for k, v in summary.get("clinical", {}).items())
        title = f"{summary['study']} ({summary.get('dataset') or 'study'})" + (
            f" — {clinical}" if clinical else ""
        )
        table = Table(title=title, title_justify="left")
        for column in (
            "series",
            "shape (X,Y,Z,T)",
            "spacing mm",
            "slices",
            "frames",
            "sequence",
            "view",
            "labels",
            "vendor",
        ):
            table.add_column(column)
        for s in summary["series"]:
            spacing = "unknown" if s["spacing_mm"] is None else "×".join(f"{v:.3g}" for v in s["spacing_mm"])
            table.add_row(
                s["name"],
                "×".join(map(str, s["shape"])),
                spacing,
                str(s["slices"]),
                str(s["frames"]),
                s["sequence"] or "?",
                s["view"] or "?",
                ", ".join(s["labels_present"]) or "-",
                s["vendor"] or "-",
            )
        out.print(table)
    for failure in failures:
        out.print(f"[red]failed[/red] {failure['source']}: {failure['error']}")
