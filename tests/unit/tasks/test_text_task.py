"""What every text task shares: ``sample`` takes a list of prompts, never a bare string."""

from __future__ import annotations

import pytest
import torch

from fedgen.modality import DataSpec, Modality
from fedgen.tasks.byte_gpt import ByteGptParams, ByteGptTask


def test_a_bare_string_prompt_is_a_type_error_not_one_prompt_per_character():
    # Prepare: a tiny byte_gpt (lm_lora's check: tests/unit/tasks/test_lm_lora.py).
    params = ByteGptParams(width=32, layers=1, heads=2, block_size=16, max_new_tokens=2)
    task = ByteGptTask.from_spec(params, DataSpec(Modality.TEXT, vocab_size=256), seed=0)
    # Execute / Assert: iterated, "Once upon" would be nine one-character prompts.
    with pytest.raises(TypeError, match=r"pass a list of prompts, e\.g\. \['Once upon'\]"):
        task.sample("Once upon", torch.Generator().manual_seed(0))
    with pytest.raises(TypeError, match="samples from a list of prompts, got int"):
        task.sample(3, torch.Generator().manual_seed(0))
    assert len(task.sample(["Once upon"], torch.Generator().manual_seed(0))) == 1
    assert len(task.sample(("a", "b"), torch.Generator().manual_seed(0))) == 2
