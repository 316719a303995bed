"""Table samples: synthetic rows written as a CSV a person (or pandas) can open."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch

from fedgen.registry import SAMPLE_WRITERS


@SAMPLE_WRITERS.register("tables")
def write_table_samples(task: Any, path: Path, rows: int, generator: torch.Generator) -> Path:
    """``path``.csv: ``rows`` unconditioned synthetic rows of ``task``, with a header."""
    out = path.with_suffix(".csv")
    out.parent.mkdir(parents=True, exist_ok=True)
    task.sample(rows, generator).to_csv(out, index=False)
    return out
