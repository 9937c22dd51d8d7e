"""Shared by the benchmark scripts: rewrite one ``## section`` of benchmarks/RESULTS.md in place,
and read ``NAME=DIR`` weight-folder arguments.

Scripts run as ``python benchmarks/<script>.py``, so this folder is on ``sys.path`` and they import
it as ``from results import update_section``.
"""

from __future__ import annotations

import datetime as dt
import platform
from pathlib import Path

RESULTS = Path(__file__).resolve().parent / "RESULTS.md"


def replace_section(heading: str, section: str, path: Path = RESULTS) -> None:
    """Replaces the section that starts with the line ``heading`` by ``section`` (or appends it).

    Args:
        heading: The section's heading line, e.g. ``"## Simulator speed (benchmarks/bench_simulator.py)"``.
        section: The whole new section, heading included.
        path: The results file.
    """
    text = path.read_text() if path.exists() else "# Benchmark results\n"
    start = text.find(heading)
    if start < 0:
        text = text.rstrip("\n") + "\n\n" + section
    else:
        end = text.find("\n## ", start + len(heading))
        text = text[:start] + section.rstrip("\n") + "\n" + ("" if end < 0 else text[end:])
    path.write_text(text.rstrip("\n") + "\n")


def update_section(title: str, body: str, path: Path = RESULTS) -> None:
    """Replaces the ``## title`` section by ``body`` under that heading (or appends it)."""
    heading = f"## {title}"
    replace_section(heading, f"{heading}\n\n{body.strip()}\n", path)


def publish(title: str, blocks: list[str], write: bool, path: Path = RESULTS) -> str:
    """Prints a section body (``blocks`` joined by blank lines); with ``write`` it becomes ``## title``.

    Returns:
        The body.
    """
    body = "\n\n".join(block.strip("\n") for block in blocks)
    print(body)
    if write:
        update_section(title, body, path)
    return body


def machine_line(command: str) -> str:
    """``Machine: ... Date: ... Command: `...`.`` for the head of a section."""
    return (
        f"Machine: {platform.node() or 'unknown'}, {platform.machine()}. "
        f"Date: {dt.datetime.now(dt.UTC):%Y-%m-%d %H:%M} UTC. Command: `{command}`."
    )


def named_paths(pairs: list[str], option: str, what: str = "DIR") -> dict[str, Path]:
    """``NAME=PATH`` arguments of ``option`` -> ordered ``{name: path}``."""
    out = {}
    for pair in pairs:
        name, sep, path = pair.partition("=")
        if not sep or not name or not path:
            raise SystemExit(f"{option} {pair!r}: expected NAME={what}")
        out[name] = Path(path)
    return out


def weight_folders(pairs: list[str], default: Path) -> dict[str, Path]:
    """``NAME=DIR`` arguments -> ordered ``{name: folder}`` (``{"shipped": default}`` when none)."""
    return named_paths(pairs, "--weights") if pairs else {"shipped": default}
