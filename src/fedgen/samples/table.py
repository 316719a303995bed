"""Table samples: synthetic rows as a CSV, and a picture of them against the real table."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch

from fedgen.registry import SAMPLE_WRITERS
from fedgen.samples.table_figure import draw_table_figure

#: Synthetic rows the picture's histograms and correlations are computed on.
FIGURE_ROWS = 2000


@SAMPLE_WRITERS.register("tables")
def write_table_samples(task: Any, path: Path, rows: int, generator: torch.Generator) -> Path:
    """``path``.csv: ``rows`` unconditioned synthetic rows of ``task``, with a header; and
    ``path``.png: histograms and correlations of ``FIGURE_ROWS`` more against the real
    table's merged statistics (``fedgen.samples.table_figure``). Returns the CSV's path."""
    out = path.with_suffix(".csv")
    out.parent.mkdir(parents=True, exist_ok=True)
    task.sample(rows, generator).to_csv(out, index=False)
    figure = draw_table_figure(task.encoder, task.sample(FIGURE_ROWS, generator))
    figure.save(path.with_suffix(".png"))
    return out
