"""Text samples: prompted continuations written to a plain-text file, one block each."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch

from fedgen.registry import SAMPLE_WRITERS

#: Prompts every text run is sampled with, so rounds and runs compare like for like.
PROMPTS = ("The ", "A man ", "\n", "What is ")


@SAMPLE_WRITERS.register("text")
def write_text_samples(task: Any, path: Path, per_prompt: int, generator: torch.Generator) -> Path:
    """``path``.txt: ``per_prompt`` continuations of each of ``PROMPTS`` from ``task``."""
    blocks = []
    for prompt in PROMPTS:
        for text in task.sample([prompt] * per_prompt, generator):
            blocks.append(f"--- prompt {prompt!r}\n{prompt}{text}\n")
    out = path.with_suffix(".txt")
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text("".join(blocks), encoding="utf-8")
    return out
