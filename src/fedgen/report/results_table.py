"""Benchmark results as markdown tables, written row by row.

Every benchmark appends a section to a table file: when it ran, on which
machine, with which command and commit, then one row per measurement as soon
as it is measured, so a run that is cut off still leaves its figures.
"""

from __future__ import annotations

import datetime as dt
import os
import platform
import subprocess
import sys
from collections.abc import Mapping, Sequence
from pathlib import Path

import torch


def machine_description() -> str:
    """CPU model, core count, torch threads, Python and torch versions of this machine."""
    cpu = "unknown CPU"
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    return (
        f"{cpu}, {os.cpu_count()} cores, {torch.get_num_threads()} torch threads, "
        f"Python {platform.python_version()}, torch {torch.__version__}"
    )


def current_commit() -> str:
    """The short hash of HEAD (with ``+dirty`` when the tree has changes), or ``unknown``."""
    try:
        head = subprocess.run(
            ["git", "rev-parse", "--short", "HEAD"], capture_output=True, text=True, check=True
        ).stdout.strip()
        dirty = subprocess.run(
            ["git", "status", "--porcelain", "--untracked-files=no"],
            capture_output=True,
            text=True,
            check=True,
        ).stdout.strip()
    except (OSError, subprocess.CalledProcessError):
        return "unknown"
    return head + ("+dirty" if dirty else "")


def format_cell(value: object) -> str:
    """Four significant digits for floats, thousands kept whole; ``-`` for missing."""
    if value is None:
        return "-"
    if isinstance(value, float):
        if value != value:  # NaN
            return "nan"
        return f"{value:.4g}" if abs(value) < 1000 else f"{value:.0f}"
    return str(value)


class ResultsTable:
    """A markdown table file that a benchmark appends to, one section per invocation.

    Args:
        path: the ``.md`` file (created with its parent folders if missing).
        columns: the column names, in order.
    """

    def __init__(self, path: Path, columns: Sequence[str]) -> None:
        self.path = Path(path)
        self.columns = list(columns)

    def start(self, title: str, notes: Sequence[str] = (), command: str | None = None) -> None:
        """Append a section header: title, date, commit, machine, command, notes, column row."""
        self.path.parent.mkdir(parents=True, exist_ok=True)
        command = command or " ".join([Path(sys.executable).name, *sys.argv])
        lines = [
            f"\n## {title}: {dt.datetime.now():%Y-%m-%d %H:%M} (commit {current_commit()})\n",
            f"- machine: {machine_description()}",
            f"- command: `{command}`",
            *[f"- {note}" for note in notes],
            "",
            "| " + " | ".join(self.columns) + " |",
            "|" + "---|" * len(self.columns),
        ]
        with self.path.open("a") as f:
            f.write("\n".join(lines) + "\n")

    def append(self, row: Mapping[str, object]) -> str:
        """Append one row (missing columns print as ``-``); return the line written."""
        unknown = set(row) - set(self.columns)
        if unknown:
            raise ValueError(f"row has columns not in the table: {sorted(unknown)}")
        line = "| " + " | ".join(format_cell(row.get(c)) for c in self.columns) + " |"
        with self.path.open("a") as f:
            f.write(line + "\n")
        return line
