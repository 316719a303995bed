"""The two halves driven by hand: phase order, refusals, and what the server holds."""

import collections.abc
import typing

import numpy as np
import pytest

from fedgen.transforms.secagg import messages
from fedgen.transforms.secagg.client import SecAggClient
from fedgen.transforms.secagg.config import SecAggConfig
from fedgen.transforms.secagg.errors import SecAggError, ShareTamperedError
from fedgen.transforms.secagg.fixed_point import decode_sum, encode
from fedgen.transforms.secagg.graph import neighbour_graph
from fedgen.transforms.secagg.keys import deterministic_entropy
from fedgen.transforms.secagg.messages import UnmaskRequest, UnmaskResponse
from fedgen.transforms.secagg.server import SecAggServer

N, D = 5, 64


def make_round(seed: int = 0):
    plan = SecAggConfig(rounding="nearest").plan(N)
    entropy = deterministic_entropy(seed)
    clients = {
        c: SecAggClient(c, 0, plan, "nearest", np.random.default_rng(c), entropy) for c in range(N)
    }
    server = SecAggServer(0, plan, neighbour_graph(range(N), None, 0, 0), D)
    values = {c: np.random.default_rng(100 + c).uniform(-1, 1, D) for c in range(N)}
    return plan, clients, server, values


def run_to_unmask(clients, server, values, drop=()):
    dirs = server.collect_keys([c.advertise_keys() for c in clients.values()])
    sent = [m for c, d in dirs.items() for m in clients[c].share_keys(d)]
    inbox = server.route_shares(sent)
    masked = [clients[c].masked_input(inbox[c], values[c]) for c in inbox if c not in drop]
    return server.collect_masked(masked)


def test_hand_driven_round_sums_survivors_exactly():
    # Prepare
    plan, clients, server, values = make_round()
    # Execute
    requests = run_to_unmask(clients, server, values, drop=[2])
    total = server.unmask([clients[c].unmask(r) for c, r in requests.items()])
    # Assert: equals the sum of each survivor's own encoding
    expected = sum(
        encode(values[c], plan.levels, 32, "nearest", np.random.default_rng())[0]
        for c in (0, 1, 3, 4)
    )
    assert np.array_equal(total, expected & np.uint64(2**32 - 1))
    assert (
        np.abs(decode_sum(total, plan.levels, 32) - sum(values[c] for c in (0, 1, 3, 4))).max()
        < 1e-6
    )


def test_server_holds_no_client_and_no_plaintext_vector():
    # Prepare / Execute
    plan, clients, server, values = make_round()
    requests = run_to_unmask(clients, server, values)
    encoded = [
        encode(values[c], plan.levels, 32, "nearest", np.random.default_rng())[0] for c in range(N)
    ]

    def walk(obj, depth=0):
        yield obj
        if depth < 4 and isinstance(obj, dict):
            for k, v in obj.items():
                yield from walk(k, depth + 1)
                yield from walk(v, depth + 1)
        elif depth < 4 and isinstance(obj, list | tuple | set):
            for v in obj:
                yield from walk(v, depth + 1)

    # Assert: every field is public data or masked sums; no client object, no update
    held = list(walk(vars(server)))
    assert not any(isinstance(o, SecAggClient) for o in held)
    arrays = [o for o in held if isinstance(o, np.ndarray)]
    assert arrays and not any(np.array_equal(a, e) for a in arrays for e in encoded)
    # and its methods take messages only
    for method in ("collect_keys", "route_shares", "collect_masked", "unmask"):
        hints = typing.get_type_hints(getattr(SecAggServer, method))
        hints.pop("return")
        (param,) = hints.values()
        assert typing.get_origin(param) is collections.abc.Sequence
        (item,) = typing.get_args(param)
        assert item.__module__ == messages.__name__
    assert requests


def test_phases_must_run_in_order():
    _, clients, _, values = make_round()
    with pytest.raises(SecAggError, match="phase 'masked_input' called while in 'advertise_keys'"):
        clients[0].masked_input([], values[0])


def test_client_refuses_to_reveal_both_shares_or_to_be_called_dropped():
    _, clients, server, values = make_round()
    requests = run_to_unmask(clients, server, values)
    bad = UnmaskRequest(0, survivors=(0, 1, 2, 3), dropped=(3,))
    with pytest.raises(ShareTamperedError, match="both survivor and dropout"):
        clients[0].unmask(bad)
    with pytest.raises(ShareTamperedError, match="this client as a dropout"):
        clients[1].unmask(UnmaskRequest(0, survivors=(0, 2, 3, 4), dropped=(1,)))
    assert set(requests) == set(range(N))


def test_server_uses_no_share_of_a_response_revealing_both_shares_of_one_client():
    # Prepare: client 0 answers with both shares of client 1 (which would unmask it).
    plan, clients, server, values = make_round()
    requests = run_to_unmask(clients, server, values)
    responses = [clients[c].unmask(r) for c, r in requests.items()]
    r0 = responses[0]
    both = UnmaskResponse(0, 0, r0.self_mask_shares, {1: r0.self_mask_shares[1]})
    # Execute: the response counts as none; the others are enough to unmask
    total = server.unmask([both, *responses[1:]])
    # Assert: the round still sums every survivor (one client cannot abort it)
    assert np.abs(decode_sum(total, plan.levels, 32) - sum(values.values())).max() < 1e-6
