"""Secure aggregation as a stage over encoded messages, on real MNIST digits and real crypto.

Oracles: the in-process backend's round (the process pool's workers hold the
updates in their custody and must give the same model bit for bit); the
protocol run with every client's state kept between messages in memory
(``secure_aggregate``) against one whose clients restart from their exported
state for every message, as a Flower ClientApp does.
"""

from __future__ import annotations

import contextlib

import numpy as np
import pytest
import torch
from test_federation import tiny_config

from fedgen.engine.backends.secagg_client import answer_phase, hold_update
from fedgen.engine.secure_stage import WireLink
from fedgen.experiment import build_experiment
from fedgen.transforms.secagg import SecAggConfig, secure_aggregate
from fedgen.transforms.secagg.codec import from_message, to_message
from fedgen.transforms.secagg.messages import EncryptedShare, KeyDirectory, UnmaskResponse
from fedgen.transforms.secagg.protocol import rounding_seed, run_secure_sum
from fedgen.transforms.secagg.requests import LoneRelease, LoneRequest, MaskRequest, StartRound
from fedgen.wire import WireError, decode, encode

torch.set_num_threads(1)

SECURE = "[{name: clip, params: {max_norm: 1.0}}, {name: secagg}]"


def make_updates(n: int, size: int, seed: int) -> dict[int, dict[str, torch.Tensor]]:
    gen = torch.Generator().manual_seed(seed)
    return {c: {"w": 0.1 * torch.randn(size, generator=gen)} for c in range(n)}


def test_process_pool_secure_round_equals_in_process_bit_for_bit(mnist_dir):
    # Prepare: the pool's workers train and hand each held update back in custody.
    inproc = build_experiment(tiny_config(mnist_dir, transforms=SECURE)).federation
    pool = build_experiment(
        tiny_config(
            mnist_dir,
            transforms=SECURE,
            **{"backend.name": "process_pool", "backend.params": "{workers: 2}"},
        )
    ).federation
    # Execute
    a = inproc.run_round(0).metrics
    b = pool.run_round(0).metrics
    pool.backend.close()
    # Assert
    assert a["secagg/survivors"] == b["secagg/survivors"] == 4
    for k in inproc.global_state:
        assert torch.equal(inproc.global_state[k], pool.global_state[k]), k
    assert a["bytes_up"] == b["bytes_up"]
    assert not inproc.backend.held and not pool.backend.held  # forgotten after the round


def test_a_client_that_refuses_a_phase_is_a_dropout_and_the_round_goes_on(mnist_dir):
    # Prepare: client 2 answers its masked-input request with garbage.
    fed = build_experiment(tiny_config(mnist_dir, transforms=SECURE)).federation
    exchange = fed.backend.exchange

    def hostile(round, requests):
        replies = exchange(round, requests)
        if isinstance(from_message(decode(requests[0])), MaskRequest) and 2 in replies:
            replies[2] = b"not a message"
        return replies

    fed.backend.exchange = hostile  # type: ignore[method-assign]
    # Execute
    m = fed.run_round(0).metrics
    # Assert: the server unmasked client 2's pairwise masks from the others' shares.
    assert "round_failed" not in m
    assert m["secagg/survivors"] == 3 and m["secagg/dropped"] == 1
    assert all(torch.isfinite(v).all() for v in fed.global_state.values())


def test_a_nan_update_fails_on_its_client_before_masking(mnist_dir):
    fed = build_experiment(
        tiny_config(
            mnist_dir,
            transforms=SECURE,
            faults="{nan: 0.4}",
        )
    ).federation
    m = fed.run_round(0).metrics
    # The server learns only that those clients dropped, never why (nor saw the NaN).
    assert 1 <= m["failures"] <= 2 and set(m["failed_clients"].values()) == {"dropped"}
    assert m["secagg/survivors"] == 4 - m["failures"] and "round_failed" not in m


def test_clients_restarting_for_every_message_give_the_same_sum():
    # Prepare: six clients; each phase is answered by answer_phase from the exported
    # state alone, through encoded messages (what a ClientApp process does).
    updates = make_updates(6, 50, seed=3)
    weights = {c: float(c + 1) for c in updates}
    config = SecAggConfig()
    reference = secure_aggregate(updates, weights, config=config, seed=5, round=2)
    held = {}
    for cid, update in updates.items():
        state = hold_update(cid, 2, 0, update, update, None, frozenset())
        # The engine seeds rounding from the client's round seed; use the reference's.
        state["rounding_seed"] = rounding_seed(5, 2, cid)
        held[cid] = state

    def exchange(requests):
        replies = {}
        for cid, request in requests.items():
            replies[cid], held[cid] = answer_phase(request, held[cid], cid)
        return replies

    link = WireLink(exchange)
    names = list(updates[0])
    # Execute
    got = run_secure_sum(
        weights,
        config=config,
        seed=5,
        round=2,
        names=names,
        shapes=[updates[0][k].shape for k in names],
        link=link,
    )
    # Assert: the same exact modular sum, so the same decoded figures.
    for k in names:
        assert torch.equal(got.weighted_sum[k], reference.weighted_sum[k]), k
    assert got.weight_sum == reference.weight_sum and got.survivors == reference.survivors
    assert not link.refused
    # Every byte counted is an encoded message's length, both ways.
    assert sum(link.bytes_up.values()) > sum(reference.bytes_up.values()) > 0


def test_a_client_refuses_a_replayed_round_and_forgets_its_update():
    state = hold_update(0, 3, 0, {"w": torch.ones(4)}, {"w": torch.zeros(4)}, None, frozenset())
    start = StartRound(2, 3, 5, 2 / 3, 32, 1.0, None, None, "stochastic")
    reply, kept = answer_phase(encode(to_message(start)), state, 0)
    assert "replayed" in decode(reply).meta["error"] and kept is None
    # A request reaching another client's node is refused too.
    reply, kept = answer_phase(encode(to_message(start)), state, 1)
    assert "reached client 0" in decode(reply).meta["error"] and kept is None


def test_codec_round_trips_every_message_and_refuses_garbage():
    share = EncryptedShare(1, 2, 3, b"\x01" * 60)
    messages = [
        StartRound(3, 5, 101, 0.5, 32, 2.0, 20, 4, "nearest"),
        KeyDirectory(3, {1: (b"a" * 32, b"b" * 32), 4: (b"c" * 32, b"d" * 32)}),
        MaskRequest(3, (share, share), 0.25),
        LoneRequest(3, (4, 1), (0.5, 2.0)),
        UnmaskResponse(2, 3, {1: b"\x02" * 33}, {}),
        {"values": None, "held": {3: (b"x", b"y")}, "plan": {"levels": 7}},
    ]
    for message in messages:
        assert from_message(decode(encode(to_message(message)))) == message
    release = from_message(decode(encode(to_message(LoneRelease(2, 3, np.arange(5.0))))))
    assert (release.client_id, release.round) == (2, 3)
    assert np.array_equal(release.values, np.arange(5.0))
    data = bytearray(encode(to_message(messages[2])))
    for i in range(0, len(data), 7):
        bad = bytearray(data)
        bad[i] ^= 0x5A
        # Refused in words (WireError) or read as another message; anything else
        # would escape the client's handler.
        with contextlib.suppress(WireError):
            from_message(decode(bytes(bad)))
    with pytest.raises(WireError, match="no message"):
        from_message(decode(encode(to_message(messages[0])).replace(b"StartRound", b"StartRoumd")))


def test_a_lone_client_adds_its_recipes_noise_with_its_own_key():
    own = (0.0, 2.0)

    def held(key: bytes | None = b"k" * 32, seed: int = 7, stds=own) -> dict:
        return hold_update(
            0,
            3,
            seed,
            {"a": torch.ones(2), "b": torch.ones(4)},
            {"a": torch.zeros(2), "b": torch.zeros(4)},
            None,
            frozenset(),
            key,
            None if stds is None else ((2, 4), stds),
        )

    def ask(request: LoneRequest, state: dict) -> tuple[object, dict | None]:
        # The client keeps its state as a ClientApp keeps it: encoded between messages.
        state = from_message(decode(encode(to_message(state))))
        reply, kept = answer_phase(encode(to_message(request)), state, 0)
        message = decode(reply)
        return (message.meta.get("error") or from_message(message)), kept

    good = LoneRequest(3, (2, 4), own)
    # Execute
    release, kept = ask(good, held())
    # Assert: no noise where none is set, noise elsewhere; the client's round is over
    # (it keeps nothing, so a second request gets nothing).
    assert isinstance(release, LoneRelease) and kept is None
    assert np.array_equal(release.values[:2], [1.0, 1.0])
    assert (release.values[2:] != 1.0).all()
    # The draw is the client's: the same key and round seed draw it again (a resumed
    # run), another key or round seed another.
    again, _ = ask(good, held())
    assert np.array_equal(again.values, release.values)
    for other in (held(key=b"j" * 32), held(seed=8)):
        assert not np.array_equal(ask(good, other)[0].values, release.values)
    # Refused, each in words: less noise (or more) than the client's own recipe sets, a
    # replayed round, a layout that is not the update's, a client whose recipe adds no
    # noise on the server.
    for request, state, words in [
        (LoneRequest(3, (2, 4), (0.0, 1.0)), held(), "noise its own recipe sets"),
        (LoneRequest(3, (2, 4), (0.0, 4.0)), held(), "noise its own recipe sets"),
        (LoneRequest(2, (2, 4), own), held(), "replayed"),
        (LoneRequest(3, (1, 5), own), held(), "do not cover"),
        (good, held(stds=None), "will not send its update alone"),
    ]:
        error, kept = ask(request, state)
        assert isinstance(error, str) and words in error and kept is None, words
