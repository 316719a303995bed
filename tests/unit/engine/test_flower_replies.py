"""What a deployed server takes from a node's reply: bytes it can bound before it
allocates, and only an answer for the client the job went to."""

from __future__ import annotations

import io

import numpy as np
import pytest
import torch

pytest.importorskip("flwr", reason="deployment needs the flower extra: pip install -e '.[flower]'")

from flwr.app import Array, ArrayRecord, RecordDict

from fedgen.engine.backends.flower import FlowerBackend, _Reply
from fedgen.engine.backends.flower_records import ARRAY, RECORD, pack, unpack
from fedgen.engine.backends.local_training import reply_message
from fedgen.types import ClientResult
from fedgen.wire import WireError


def record_of(data: bytes) -> RecordDict:
    """A RecordDict whose fedgen array carries ``data`` as its .npy bytes, as sent."""
    array = Array(dtype="uint8", shape=(10,), stype="numpy.ndarray", data=data)
    return RecordDict({RECORD: ArrayRecord(array_dict={ARRAY: array})})


def test_packed_bytes_come_back_unchanged():
    data = bytes(range(256)) * 3
    assert unpack(pack(data)) == data


def test_a_header_claiming_more_than_it_holds_is_refused_before_any_allocation():
    # Prepare: ten bytes under a header that claims 2^50 (np.load would allocate them)
    header = io.BytesIO()
    np.lib.format.write_array_header_1_0(
        header, {"descr": "|u1", "fortran_order": False, "shape": (2**50,)}
    )
    # Execute / Assert
    with pytest.raises(WireError, match=f"claims {2**50} bytes but holds 10"):
        unpack(record_of(header.getvalue() + b"x" * 10))


def test_an_array_of_another_dtype_is_not_a_message():
    saved = io.BytesIO()
    np.save(saved, np.zeros(3, dtype=np.float32), allow_pickle=False)
    with pytest.raises(WireError, match="not bytes"):
        unpack(record_of(saved.getvalue()))


def test_a_reply_naming_another_client_fails_the_client_its_job_went_to():
    # Prepare: the node holding client 3 answers as client 5
    forged = reply_message(ClientResult(5, 10, update={"w": torch.ones(2)}))
    # Execute
    result = FlowerBackend()._result(3, 7, _Reply(forged, 99))
    # Assert: client 3 failed, client 5 is untouched; the bytes still count
    assert result.client_id == 3 and result.update is None
    assert result.failure == "the reply names client 5, the job went to 3"
    assert (result.bytes_down, result.bytes_up) == (7, 99)


def test_a_refusal_counts_the_bytes_it_came_in():
    refusal = reply_message(ClientResult(3, 0, failure="x"))
    refusal.meta["error"] = "a job before the hello"
    result = FlowerBackend()._result(3, 7, _Reply(refusal, 42))
    assert result.failure is not None and result.bytes_up == 42
