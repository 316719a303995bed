"""Downlink compression on real MNIST federations: clients rebuild the server's public
model from compressed deltas exactly (its digest), a client that missed rounds gets
each delta it missed, the bytes recorded are the serialized jobs, worker processes
agree with the sequential loop, a run resumes bit for bit, and a client that lost its
copy fails one round and then receives the model whole."""

from __future__ import annotations

import pytest
import torch
from test_federation import interrupt_at
from tiny_federation import tiny_config

from fedgen.engine.backends import local_training
from fedgen.engine.callbacks import CheckpointCallback
from fedgen.engine.downlink import DOWNLINK_PREFIX, Downlink, ReceivedDownlink, receive
from fedgen.errors import ConfigError
from fedgen.experiment import build_experiment, restore_latest
from fedgen.ledger.digest import state_digest
from fedgen.transforms.lowrank import LowRank
from fedgen.transforms.quantize import StochasticQuantization
from fedgen.transforms.sign import ScaledSign
from fedgen.wire import decode, encode

FOUR_BIT = "{name: quantize, params: {bits: 4}}"
#: Half the clients a round, so some miss rounds and catch up on several deltas.
HALF = "{min_clients: 2, fraction: 0.5}"


def _model(version: int) -> dict[str, torch.Tensor]:
    """A model that drifts a little each version, as a trained one does."""
    base, drift = torch.Generator().manual_seed(0), torch.Generator().manual_seed(version + 1)
    return {
        "w": torch.randn(200, 100, generator=base) + 0.1 * torch.randn(200, 100, generator=drift),
        "b": torch.randn(100, generator=base) + 0.1 * torch.randn(100, generator=drift),
        "steps": torch.tensor([version], dtype=torch.int64),
    }


def _downlink() -> Downlink:
    codec = StochasticQuantization(bits=4, bucket_size=64)
    spec = {"name": "quantize", "params": {"bits": 4, "bucket_size": 64}, "state": {}}
    return Downlink(codec, spec, seed=7, initial=_model(0))


def test_clients_rebuild_each_version_exactly_from_the_deltas_they_missed():
    # Prepare: a server chain over 5 versions of a changing model (version 0 is the
    # initial model every client builds itself); client 0 syncs every version, client 1
    # only at versions 0 and 4.
    server = _downlink()
    own: dict[int, dict[str, torch.Tensor]] = {0: {}, 1: {}}
    sizes: dict[int, list[int]] = {0: [], 1: []}
    initial = _model(0)
    # Execute
    for version in range(5):
        view = server.advance(version, _model(version))
        for cid in (0, 1) if version in (0, 4) else (0,):
            arrays, meta = server.payload(cid)
            sizes[cid].append(len(encode_job(arrays, meta)))
            got = receive(server_as_client(arrays, meta, cid), cid, own[cid], initial, initial)
            server.settle(cid, True)
            # Assert: the client's start is the server's public model, bit for bit.
            assert state_digest(got) == state_digest(view)
    # Nothing to send for the initial model; then a 4-bit delta a version (an eighth of
    # the bits and the buckets' scales); client 1 got the four it missed in one job.
    whole = len(encode_job(server.view, {}))
    assert sizes[0][0] < 1000 and sizes[1][0] < 1000
    assert all(whole / 8 < size < whole / 6 for size in sizes[0][1:])
    assert whole / 2 < sizes[1][1] < whole
    # What compression left out is carried into the next delta: the public model stays
    # within about one 4-bit step of the server's (the drift's range over 15 levels).
    last = _model(4)
    assert (server.view["w"] - last["w"]).abs().max() < 0.15
    assert torch.equal(server.view["steps"], last["steps"])


def _chase(server: Downlink, target, versions: int, every: int) -> list[float]:
    """Advance ``server``'s public model toward a fixed ``target`` for ``versions``; client
    5 receives it every ``every`` versions and must rebuild it exactly (digest). Returns
    the gap ``||target - public||`` of the weight matrix at each version."""
    initial, own = _model(0), {}
    gaps = []
    for version in range(versions):
        view = server.advance(version, target)
        gaps.append(float((target["w"] - view["w"]).norm()))
        if version % every == 0:
            got = receive(server, 5, own, initial, initial)
            server.settle(5, True)
            assert state_digest(got) == state_digest(view)
    return gaps


def test_a_sign_downlink_on_a_shared_support_converges_to_the_server_model():
    # Prepare: a 1-bit chain on half the coordinates a version (the support drawn from
    # the run's seed, as the recipe binds it), toward a model that stops changing.
    codec = ScaledSign(0.5, bucket_size=64, error_feedback=False)
    codec.bind_seed(7)
    params = {"fraction": 0.5, "bucket_size": 64, "error_feedback": False}
    spec = {"name": "sign", "params": params, "state": codec.state_dict()}
    server = Downlink(codec, spec, seed=7, initial=_model(0))
    target = _model(1)
    # Execute: client 5 joins at version 0 and then every third version; it rebuilds
    # the public model bit for bit from 1-bit deltas.
    gaps = _chase(server, target, versions=30, every=3)
    # What each delta left out is in the next one and the compressor is contractive:
    # the public model closes in on the server's.
    assert gaps[-1] < gaps[0] / 5
    # An unbiased 1-bit code (a value sent as its bucket's min or max) is not
    # contractive: under the same error feedback the gap grows without bound.
    quantized = Downlink(StochasticQuantization(1, 64), spec, seed=7, initial=_model(0))
    far = [float((target["w"] - quantized.advance(v, target)["w"]).norm()) for v in range(10)]
    assert far[-1] > 10 * far[0]


def test_a_rank_one_downlink_converges_to_the_server_model():
    # Prepare: each delta as rank-1 factors in 8 bits (a projection: contractive).
    params = {"rank": 1, "bits": 8, "bucket_size": 2048, "error_feedback": False}
    spec = {"name": "lowrank", "params": params, "state": {}}
    server = Downlink(LowRank(**params), spec, seed=7, initial=_model(0))
    target = _model(1)
    # Execute: client 5 joins every fourth version, catching up on the deltas it missed,
    # and rebuilds the public model bit for bit from the factors. The gap is a full-rank
    # 200 x 100 matrix: a rank-1 delta removes one direction a version, so the chain
    # needs about as many versions as the gap has directions.
    gaps = _chase(server, target, versions=120, every=4)
    # Each delta sends the top singular direction of what is left, and what it leaves
    # out is in the next one: the public model closes in on the server's.
    assert gaps[-1] < gaps[0] / 5
    assert gaps == sorted(gaps, reverse=True)


def encode_job(arrays, meta) -> bytes:
    from fedgen.wire import Message

    return encode(Message(arrays, {"downlink": meta}))


def server_as_client(arrays, meta, cid) -> ReceivedDownlink:
    """What a client decodes from its job (round trip through the wire)."""
    message = decode(encode_job(arrays, meta))
    return ReceivedDownlink(message.arrays, message.meta["downlink"], cid)


def test_a_client_without_its_copy_or_with_a_tampered_one_is_refused_with_the_reason():
    server = _downlink()
    initial = _model(0)
    server.advance(0, _model(1))
    own: dict[str, torch.Tensor] = {}
    receive(server, 3, own, initial, initial)
    server.settle(3, True)
    server.advance(1, _model(2))
    with pytest.raises(ValueError, match="keeps no copy"):
        receive(server, 3, {}, initial, initial)
    tampered = {k: v.clone() for k, v in own.items()}
    tampered[DOWNLINK_PREFIX + "b"][0] += 1e-3
    with pytest.raises(ValueError, match="digest mismatch"):
        receive(server, 3, tampered, initial, initial)
    # A client with another initial model fails the digest too.
    other = {**initial, "w": initial["w"] + 1.0}
    with pytest.raises(ValueError, match="digest mismatch"):
        receive(server, 4, {}, initial, other)
    # A client that failed is sent the whole model next time.
    server.settle(3, False)
    arrays, meta = server.payload(3)
    assert meta["base"] is None and arrays.keys() == initial.keys()


def test_recorded_bytes_are_the_serialized_jobs_and_fall_with_the_downlink(mnist_dir, monkeypatch):
    # Prepare: record the length of every job, serialized for real.
    sent: list[int] = []
    job_message = local_training.job_message

    def measured_job(*args):
        message = job_message(*args)
        sent.append(len(encode(message)))
        return message

    monkeypatch.setattr(local_training, "job_message", measured_job)
    # Every client every round: after round 0 each job is one delta.
    items = {"federation.rounds": 3, "strategy.params": "{min_clients: 4, fraction: 1.0}"}
    plain = build_experiment(tiny_config(mnist_dir, **items)).federation
    compressed = build_experiment(
        tiny_config(mnist_dir, **items, **{"federation.downlink": FOUR_BIT})
    ).federation
    # Execute
    assert plain.run()
    sent.clear()
    assert compressed.run()
    # Assert
    assert all(m["failures"] == 0 for m in compressed.history)
    assert sum(m["bytes_down"] for m in compressed.history) == sum(sent)
    # Round 0 starts from the initial model the clients build themselves: its jobs
    # carry no model. After it every job is a 4-bit delta: an eighth of the bits, plus a
    # float32 scale pair per bucket and the arrays' names.
    assert compressed.history[0]["bytes_down"] < plain.history[0]["bytes_down"] / 50
    for plain_m, m in zip(plain.history[1:], compressed.history[1:], strict=True):
        assert plain_m["bytes_down"] / 8 < m["bytes_down"] < plain_m["bytes_down"] / 5


@pytest.mark.parametrize(
    "codecs",
    [
        {"federation.downlink": FOUR_BIT},
        # Rank-1 factors both ways: the SVD in worker processes and after a resume.
        {
            "transforms": "[{name: lowrank, params: {rank: 1}}]",
            "federation.downlink": "{name: lowrank, params: {rank: 1, error_feedback: false}}",
        },
        # Replies in the broadcast's basis: the basis travels in the jobs, lives in each
        # client's private state and the checkpoint, and a client that missed rounds
        # rebuilds it from the deltas.
        {
            "transforms": "[{name: subspace, params: {rank: 2}}]",
            "federation.downlink": "{name: subspace, params: {rank: 2, error_feedback: false}}",
        },
    ],
    ids=["quantize-4", "lowrank", "subspace"],
)
def test_process_pool_matches_in_process_and_a_resumed_run_ends_bit_identical(
    mnist_dir, tmp_path, codecs
):
    items = {"federation.rounds": 3, "strategy.params": HALF, **codecs}
    ref = build_experiment(tiny_config(mnist_dir, **items)).federation
    pool = build_experiment(
        tiny_config(mnist_dir, **items, **{"backend.name": "process_pool"})
    ).federation
    initial = {k: v.clone() for k, v in ref.global_state.items()}
    assert ref.run() and pool.run()
    # Every reply decoded (a failed round leaves the model where it was, and runs that all
    # failed would agree), and the model moved.
    assert all(m["failures"] == 0 for m in ref.history + pool.history)
    assert any(not torch.equal(initial[k], ref.global_state[k]) for k in initial)
    for k in ref.global_state:
        assert torch.equal(ref.global_state[k], pool.global_state[k]), k
    assert [m["bytes_down"] for m in ref.history] == [m["bytes_down"] for m in pool.history]
    # Resume: interrupted in round 2 (its second client), restored from round 1's checkpoint.
    cfg = tiny_config(mnist_dir, **items)
    meta = {"format": 1, "fingerprint": cfg.fingerprint()}
    first = build_experiment(cfg, [CheckpointCallback(tmp_path, 1, 2, meta)]).federation
    interrupt_at(first.task, 2 * 2 + 2)
    assert first.run() is False
    resumed = build_experiment(cfg, [CheckpointCallback(tmp_path, 1, 2, meta)]).federation
    assert restore_latest(resumed, tmp_path, cfg) == 1
    assert resumed.run()
    assert all(m["failures"] == 0 for m in resumed.history)
    for k in ref.global_state:
        assert torch.equal(ref.global_state[k], resumed.global_state[k]), k
    assert [m["bytes_down"] for m in ref.history] == [m["bytes_down"] for m in resumed.history]
    assert resumed.downlink is not None and ref.downlink is not None
    assert resumed.downlink.synced == ref.downlink.synced
    assert resumed.downlink.shared.keys() == ref.downlink.shared.keys()
    for k in ref.downlink.shared:
        assert torch.equal(resumed.downlink.shared[k], ref.downlink.shared[k]), k


def test_a_client_that_lost_its_copy_fails_once_then_gets_the_model_whole(mnist_dir):
    items = {"federation.rounds": 3, "strategy.params": "{min_clients: 4, fraction: 1.0}"}
    fed = build_experiment(
        tiny_config(mnist_dir, **items, **{"federation.downlink": FOUR_BIT})
    ).federation
    fed.run_round(0)
    fed.next_round = 1
    # Client 2's device loses its private state between rounds.
    fed.private_states.pop(2)
    lost = fed.run_round(1)
    fed.next_round = 2
    again = fed.run_round(2)
    assert "keeps no copy" in lost.metrics["failed_clients"]["2"]
    assert again.metrics["failures"] == 0


@pytest.mark.parametrize(
    ("setting", "message"),
    [
        ({"federation.downlink": "{name: clip}"}, "is not a codec; choose from"),
        (
            {"federation.downlink": "{name: topk, params: {fraction: 0.1}}"},
            "set federation.downlink.params.error_feedback: false",
        ),
        (
            {"federation.downlink": "{name: quantize, params: {bits: 3}}"},
            "federation.downlink.params: bits",
        ),
        (
            {"federation.downlink": FOUR_BIT, "federation.mode": "gossip"},
            "set federation.mode: sync",
        ),
        (
            {"federation.downlink": FOUR_BIT, "backend.name": "split"},
            "the split backend sends each client its own blocks",
        ),
        (
            {"transforms": "[{name: subspace, params: {rank: 2}}]"},
            "add federation.downlink",
        ),
    ],
    ids=["not-a-codec", "topk-residual", "bad-params", "gossip", "split", "subspace-alone"],
)
def test_a_downlink_that_cannot_work_is_refused_before_round_one(mnist_dir, setting, message):
    with pytest.raises(ConfigError, match=message):
        build_experiment(tiny_config(mnist_dir, **setting))
