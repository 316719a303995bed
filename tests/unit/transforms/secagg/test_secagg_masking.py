"""A masked update alone looks uniform on Z_(2^k): the server learns nothing from it."""

import numpy as np
import pytest
import torch
from scipy.stats import chi2_contingency, chisquare

from fedgen.transforms.secagg import SecAggConfig, secure_aggregate
from fedgen.transforms.secagg.channel import Channel
from fedgen.transforms.secagg.fixed_point import encode, to_wire
from fedgen.transforms.secagg.keys import deterministic_entropy
from fedgen.transforms.secagg.messages import MaskedInput

D = 20_000


class RecordingChannel(Channel):
    def __init__(self) -> None:
        super().__init__()
        self.masked: dict[int, bytes] = {}

    def deliver(self, phase, message):
        if isinstance(message, MaskedInput):
            self.masked[message.client_id] = message.payload
        return message


@pytest.fixture(scope="module")
def payloads() -> dict[int, bytes]:
    # Client 0 sends all zeros, client 1 all +clip, the others small random updates.
    gen = torch.Generator().manual_seed(0)
    updates = {0: {"w": torch.zeros(D)}, 1: {"w": torch.ones(D)}}
    updates.update({c: {"w": 0.01 * torch.randn(D, generator=gen)} for c in range(2, 6)})
    channel = RecordingChannel()
    secure_aggregate(
        updates,
        dict.fromkeys(updates, 1.0),
        config=SecAggConfig(clip=1.0),
        seed=0,
        round=0,
        channel=channel,
        entropy=deterministic_entropy(42),
    )
    return channel.masked


def byte_counts(payload: bytes) -> np.ndarray:
    return np.bincount(np.frombuffer(payload, dtype=np.uint8), minlength=256)


def top_byte_counts(payload: bytes) -> np.ndarray:
    words = np.frombuffer(payload, dtype="<u4")
    return np.bincount((words >> 24).astype(np.int64), minlength=256)


@pytest.mark.parametrize("client", [0, 1, 3])
def test_masked_update_is_uniform_bytewise_and_wordwise(payloads, client):
    # Execute: chi-square against uniform on all bytes and on the top byte of each word
    p_bytes = chisquare(byte_counts(payloads[client])).pvalue
    p_words = chisquare(top_byte_counts(payloads[client])).pvalue
    # Assert (fixed seeds: deterministic)
    assert p_bytes > 0.01 and p_words > 0.01


def test_zero_and_large_updates_are_indistinguishable_once_masked(payloads):
    table = np.stack([top_byte_counts(payloads[0]), top_byte_counts(payloads[1])])
    assert chi2_contingency(table).pvalue > 0.01
    assert abs(np.frombuffer(payloads[0], "<u4").mean() / 2**31 - 1) < 0.01
    assert abs(np.frombuffer(payloads[1], "<u4").mean() / 2**31 - 1) < 0.01


def test_the_chi_square_check_has_power_on_unmasked_vectors():
    # The same check rejects the encoded but unmasked update at once.
    gen = torch.Generator().manual_seed(0)
    plan = SecAggConfig().plan(6)
    q, _ = encode(
        (0.01 * torch.randn(D, generator=gen)).double().numpy(),
        plan.levels,
        32,
        "stochastic",
        np.random.default_rng(0),
    )
    assert chisquare(top_byte_counts(to_wire(q, 32))).pvalue < 1e-10
    assert chisquare(byte_counts(to_wire(q, 32))).pvalue < 1e-10
