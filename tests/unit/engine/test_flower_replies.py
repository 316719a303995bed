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


def _inside_flower(monkeypatch) -> None:
    # Flower stamps every new message with the identity of the process it runs in.
    from flwr.supercore.task_identity import TaskIdentity

    for name, value in (("_run_id", 1), ("_node_id", 2), ("_task_id", 3)):
        monkeypatch.setattr(TaskIdentity, name, value)


def _hello_backend(monkeypatch, said_by: dict[int, dict[str, object]]) -> FlowerBackend:
    """A backend whose nodes (node id -> what its hello says) answer at once."""
    from fedgen.wire import Message

    backend = FlowerBackend()
    backend.attach(type("Grid", (), {"get_node_ids": lambda self: list(said_by)})())
    backend.nodes_timeout = 0.0

    def exchange(messages, timeout):
        return [_Reply(Message({}, said_by[m.metadata.dst_node_id]), nbytes=64) for m in messages]

    monkeypatch.setattr(backend, "_exchange", exchange)
    return backend


def test_a_node_holding_a_client_enrolled_without_one_sits_out_a_resumed_run(
    tmp_path, monkeypatch, caplog
):
    # Prepare: a run started while no node held client 2, so the ledger enrolled a key
    # the server made for it; resumed after a node for client 2 came up.
    from fedgen.engine.audit import RunAudit
    from fedgen.engine.keystore import KeyStore
    from fedgen.ledger import generate_key, public_key_hex
    from fedgen.version import __version__

    _inside_flower(monkeypatch)
    own = {c: public_key_hex(generate_key()) for c in range(3)}

    def said(c: int) -> dict[str, object]:
        return {"client_id": c, "num_examples": 10, "public_key": own[c], "fedgen": __version__}

    store = KeyStore(tmp_path / "keys")
    first = RunAudit([0, 1, 2], store)
    _hello_backend(monkeypatch, {10: said(0), 11: said(1)}).hello("{}", [0, 1, 2], first)
    first.save_keys()
    resumed = RunAudit([0, 1, 2], store)
    resumed.load_state_dict(first.state_dict())
    # Execute: every client's node answers the resumed run's hello
    backend = _hello_backend(monkeypatch, {10: said(0), 11: said(1), 12: said(2)})
    backend.hello("{}", [0, 1, 2], resumed)
    # Assert: the run goes on; the late node sits out, said why; the others are held
    assert sorted(backend.nodes) == [0, 1]
    assert resumed.client_public[2] == first.client_public[2] != own[2]
    assert "holds client 2, which joined after the run enrolled" in caplog.text


def test_a_hello_with_loosely_typed_fields_or_a_bad_key_is_a_named_refusal(monkeypatch):
    # A client id of True, "1" or 2.9 reads as 1, "1" and 2 to int(); a key that is not
    # Ed25519 once ended the run from the ledger, outside the list of node problems.
    from fedgen.engine.audit import RunAudit
    from fedgen.engine.backends.flower import DeploymentError
    from fedgen.version import __version__

    _inside_flower(monkeypatch)
    base = {"num_examples": 10, "fedgen": __version__}
    key = RunAudit([0]).client_public[0]
    said_by = {
        10: {**base, "client_id": True, "public_key": key},
        11: {**base, "client_id": "1", "public_key": key},
        12: {**base, "client_id": 2, "public_key": "ab" * 8},
    }
    with pytest.raises(DeploymentError) as refused:
        _hello_backend(monkeypatch, said_by).hello("{}", [0, 1, 2], RunAudit([0, 1, 2]))
    said = str(refused.value)
    assert "SuperNode 10: a malformed hello (client_id must be an int, got True)" in said
    assert "SuperNode 11: a malformed hello (client_id must be an int, got '1')" in said
    assert "SuperNode 12: a malformed hello" in said
