"""state_digest, file_digest and canonical JSON."""

from __future__ import annotations

import hashlib
import math

import pytest
import torch

from fedgen.ledger import LedgerError, canonical_json, file_digest, state_digest


def small_state() -> dict[str, torch.Tensor]:
    g = torch.Generator().manual_seed(0)
    return {"a.weight": torch.randn(3, 4, generator=g), "a.bias": torch.randn(3, generator=g)}


def test_state_digest_ignores_key_order_and_memory_layout():
    state = small_state()
    reordered = dict(reversed(list(state.items())))
    strided = {"a.weight": state["a.weight"].t().contiguous().t(), "a.bias": state["a.bias"]}
    assert not strided["a.weight"].is_contiguous()
    assert state_digest(state) == state_digest(reordered) == state_digest(strided)
    assert len(state_digest(state)) == 64


def test_state_digest_changes_with_values_keys_dtypes_and_shapes():
    state = small_state()
    base = state_digest(state)
    bumped = {**state, "a.bias": state["a.bias"].clone()}
    bumped["a.bias"][0] += 1e-6
    renamed = {"b.weight": state["a.weight"], "a.bias": state["a.bias"]}
    as_double = {k: v.double() for k, v in state.items()}
    reshaped = {**state, "a.weight": state["a.weight"].reshape(4, 3)}
    # The same bytes under another dtype: float32 reinterpreted as int32.
    reinterpreted = {**state, "a.weight": state["a.weight"].view(torch.int32)}
    digests = {base} | {
        state_digest(s) for s in (bumped, renamed, as_double, reshaped, reinterpreted)
    }
    assert len(digests) == 6


def test_state_digest_separates_keys_from_data():
    # Without length prefixes these two could hash the same byte stream.
    one = {"ab": torch.zeros(0), "c": torch.zeros(1)}
    two = {"a": torch.zeros(0), "bc": torch.zeros(1)}
    assert state_digest(one) != state_digest(two)


def test_state_digest_handles_scalars_empty_tensors_and_bool_and_bfloat16():
    state = {
        "scalar": torch.tensor(3.0),
        "empty": torch.zeros(0, 5),
        "mask": torch.tensor([True, False]),
        "half": torch.ones(2, dtype=torch.bfloat16),
    }
    assert state_digest(state) == state_digest({k: v.clone() for k, v in state.items()})
    assert state_digest(state) != state_digest({**state, "empty": torch.zeros(5, 0)})


def test_file_digest_is_the_sha256_of_the_bytes(tmp_path):
    path = tmp_path / "blob.bin"
    data = bytes(range(256)) * 9000  # more than one read chunk
    path.write_bytes(data)
    assert file_digest(path) == hashlib.sha256(data).hexdigest()
    with pytest.raises(LedgerError, match="cannot read"):
        file_digest(tmp_path / "absent.bin")


def test_canonical_json_is_sorted_compact_and_ascii():
    assert canonical_json({"b": 1, "a": ["é", None, True]}) == '{"a":["\\u00e9",null,true],"b":1}'
    assert canonical_json({"n": 10**40}) == '{"n":' + str(10**40) + "}"


@pytest.mark.parametrize("bad", [{"x": math.nan}, {"x": math.inf}, {"x": {1, 2}}, {1: "a"}])
def test_canonical_json_refuses_what_json_cannot_carry(bad):
    # An int key would come back as a string: the body read back would differ.
    with pytest.raises(LedgerError, match="plain JSON"):
        canonical_json(bad)
