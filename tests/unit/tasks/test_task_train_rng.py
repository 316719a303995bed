"""Local training draws its randomness from the client's generator alone.

Dropout takes no generator: it draws from torch's global RNG, which no checkpoint holds.
A task that trains with dropout must seed that RNG from the client's generator, or a
resumed run (a fresh process, the global RNG at torch's default seed) trains on other
masks than the uninterrupted run did.
"""

from __future__ import annotations

import torch

from fedgen.data.text_data import ByteTokenizer, TextClientData
from fedgen.data.text_sources import get_text_source
from fedgen.modality import DataSpec, Modality
from fedgen.seeding import global_rng_from
from fedgen.tasks.byte_gpt import ByteGptParams, ByteGptTask


def law_fortunes() -> TextClientData:
    """One client holding the real ``law`` fortunes as bytes."""
    tokens = ByteTokenizer().encode("".join(get_text_source("fortunes").load()["law"]))
    return TextClientData(0, ("law",), tokens, tokens[:64])


def trained_state(global_seed: int) -> dict[str, torch.Tensor]:
    """byte_gpt with dropout after 3 local steps from the same weights and client
    generator, with the global RNG at ``global_seed`` (another process's state)."""
    params = ByteGptParams(width=32, layers=1, heads=2, block_size=16, batch_size=4, dropout=0.3)
    task = ByteGptTask.from_spec(params, DataSpec(Modality.TEXT, vocab_size=256), seed=0)
    torch.manual_seed(global_seed)
    task.train_local(law_fortunes(), 3, torch.Generator().manual_seed(7), {})
    return task.federated_state()


def test_byte_gpt_dropout_repeats_whatever_the_global_rng():
    # Prepare / Execute
    first, second = trained_state(global_seed=1), trained_state(global_seed=2)
    # Assert: same client generator, same update, bit for bit
    assert first.keys() == second.keys()
    for key in first:
        assert torch.equal(first[key], second[key]), key


def test_byte_gpt_dropout_is_on_and_follows_the_client_generator():
    # Prepare: the same run with dropout off must differ, or the test above proves nothing
    params = ByteGptParams(width=32, layers=1, heads=2, block_size=16, batch_size=4, dropout=0.0)
    task = ByteGptTask.from_spec(params, DataSpec(Modality.TEXT, vocab_size=256), seed=0)
    # Execute
    task.train_local(law_fortunes(), 3, torch.Generator().manual_seed(7), {})
    # Assert
    with_dropout = trained_state(global_seed=1)
    assert any(not torch.equal(v, with_dropout[k]) for k, v in task.federated_state().items())


def test_global_rng_from_restores_the_callers_rng():
    # Prepare
    torch.manual_seed(3)
    expected = torch.rand(4)
    torch.manual_seed(3)
    # Execute
    with global_rng_from(torch.Generator().manual_seed(0)):
        inside = torch.rand(4)
    # Assert: the block drew from a seeded fork; the caller's stream is untouched
    assert torch.equal(torch.rand(4), expected)
    with global_rng_from(torch.Generator().manual_seed(0)):
        assert torch.equal(torch.rand(4), inside)
