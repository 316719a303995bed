"""The subspace codec: replies are projections onto the shared basis, the broadcast keeps
a mean of them whole and moves the basis to the other side, error feedback loses
nothing, a reply carries one factor, and what cannot work is refused."""

from __future__ import annotations

import pytest
import torch

from fedgen.assembly.compression import compression_problems
from fedgen.config import ComponentConfig
from fedgen.engine.downlink import Downlink, receive
from fedgen.errors import ClientUpdateError
from fedgen.ledger.digest import state_digest
from fedgen.transforms.base import TransformContext
from fedgen.transforms.codec import decode_arrival
from fedgen.transforms.lowrank import VALUES as LOWRANK_VALUES
from fedgen.transforms.lowrank import LowRank
from fedgen.transforms.sparsify import residual_key
from fedgen.transforms.subspace import SCALES, SHARED_PREFIX, VALUES, Subspace
from fedgen.wire import Message, decode, encode


def reply_ctx(private: dict) -> TransformContext:
    return TransformContext(round=0, client_id=1, seed=3, num_clients=4, private=private)


def broadcast_ctx(shared: dict) -> TransformContext:
    return TransformContext(round=0, client_id=None, seed=3, num_clients=0, private=shared)


def wire(encoded: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    return decode(encode(Message(encoded))).arrays


def model(seed: int, scale: float = 1.0) -> dict[str, torch.Tensor]:
    """A linear layer, a convolution kernel, a bias and a step counter."""
    gen = torch.Generator().manual_seed(seed)
    return {
        "fc.weight": torch.randn(96, 40, generator=gen) * scale,
        "conv.weight": torch.randn(16, 8, 3, 3, generator=gen) * scale,
        "fc.bias": torch.randn(96, generator=gen) * scale,
        "steps": torch.tensor(5),
    }


def test_a_reply_decodes_to_its_orthogonal_projection_onto_the_round_basis():
    # Prepare: version -1's basis (random orthonormal, right side) and an update.
    codec = Subspace(rank=3, bits=32)
    update = model(1)
    shared = codec.initial_shared(update, seed=11)
    assert set(shared) == {SHARED_PREFIX + "right/fc.weight", SHARED_PREFIX + "right/conv.weight"}
    private = dict(shared)
    # Execute
    encoded, _ = codec.on_client(update, reply_ctx(private))
    got = decode_arrival([codec], wire(encoded), update, 0, 1, shared)
    # Assert: each matrix is M B B^T for its orthonormal right basis B; a vector travels
    # whole; the residual is what the projection left out, orthogonal to what was sent.
    basis = shared[SHARED_PREFIX + "right/fc.weight"].clone()
    expected = update["fc.weight"] @ basis @ basis.T
    assert torch.allclose(got["fc.weight"], expected, atol=1e-5)
    assert torch.equal(got["fc.bias"], update["fc.bias"])
    rest = private[residual_key("fc.weight", "subspace")]
    assert torch.allclose(rest + got["fc.weight"], update["fc.weight"], atol=1e-5)
    assert abs(float((rest * got["fc.weight"]).sum())) < 1e-3
    # A reply's decode reads the basis and leaves it where it was.
    assert torch.equal(shared[SHARED_PREFIX + "right/fc.weight"], basis)
    assert set(shared) == {SHARED_PREFIX + "right/fc.weight", SHARED_PREFIX + "right/conv.weight"}


def test_error_feedback_conserves_what_was_sent_plus_what_is_kept():
    codec = Subspace(rank=2, bits=4)
    shared = codec.initial_shared(model(0), seed=5)
    private = dict(shared)
    total_in = {k: torch.zeros_like(v) for k, v in model(0).items() if v.is_floating_point()}
    total_out = {k: torch.zeros_like(v) for k, v in total_in.items()}
    for step in range(4):
        update = model(step + 1, scale=0.01)
        encoded, _ = codec.on_client(update, reply_ctx(private))
        got = codec.decode(wire(encoded), update, reply_ctx(shared))
        for k in total_in:
            total_in[k] += update[k]
            total_out[k] += got[k]
    # Everything put in is either sent by now or waiting in the residual.
    for k in total_in:
        kept = private[residual_key(k, "subspace")]
        assert torch.allclose(total_out[k] + kept, total_in[k], atol=1e-5), k


def test_a_reply_carries_one_factor_in_four_bits():
    codec = Subspace(rank=4, bits=4, error_feedback=False)
    update = model(2)
    shared = codec.initial_shared(update, seed=1)
    encoded, _ = codec.on_client(update, reply_ctx(dict(shared)))
    # fc 96 x 40 with a right basis: 96 x 4 coefficients; conv 16 x 72: 16 x 4; the
    # bias' 96 values whole; four bits each, a float32 scale per column or bucket.
    numbers = 96 * 4 + 16 * 4 + 96
    assert encoded[VALUES].numel() == (numbers + 1) // 2
    assert encoded[SCALES].numel() == 4 + 4 + 1
    # lowrank at the same rank sends both factors of each matrix.
    both, _ = LowRank(rank=4, bits=4, error_feedback=False).on_client(update, reply_ctx({}))
    assert both[LOWRANK_VALUES].numel() == ((96 + 40) * 4 + (16 + 72) * 4 + 96 + 1) // 2


def test_the_broadcast_keeps_a_mean_of_replies_whole_and_moves_the_basis():
    # Prepare: three clients' replies in the round's basis, and their mean.
    codec = Subspace(rank=3, bits=32, error_feedback=False)
    shared = codec.initial_shared(model(0), seed=2)
    replies = []
    for cid in range(3):
        update = model(10 + cid)
        encoded, _ = codec.on_client(update, reply_ctx(dict(shared)))
        replies.append(codec.decode(encoded, update, reply_ctx(shared)))
    mean = {k: sum(r[k] for r in replies) / 3 for k in ("fc.weight", "conv.weight", "fc.bias")}
    mean["steps"] = torch.tensor(5)
    # Execute: the server broadcasts the mean as a delta.
    encoded, _ = codec.on_client(mean, broadcast_ctx(shared))
    delta = codec.decode(wire(encoded), mean, broadcast_ctx(shared))
    # Assert: nothing of the mean is lost (it lies in the basis), and the basis is now
    # on the left, spanning the mean's column space.
    assert torch.allclose(delta["fc.weight"], mean["fc.weight"], atol=1e-4)
    assert torch.allclose(delta["conv.weight"], mean["conv.weight"], atol=1e-4)
    assert SHARED_PREFIX + "right/fc.weight" not in shared
    left = shared[SHARED_PREFIX + "left/fc.weight"]
    assert left.shape == (96, 3)
    projected = left @ torch.linalg.pinv(left) @ mean["fc.weight"]
    assert torch.allclose(projected, mean["fc.weight"], atol=1e-4)


def test_a_matrix_that_did_not_move_gets_a_random_basis_not_coordinate_axes():
    # Prepare: a broadcast where fc.weight did not move and conv.weight moved in one
    # direction only (rank 1 of 3), while the bias did move.
    codec = Subspace(rank=3, bits=32, error_feedback=False)
    shared = codec.initial_shared(model(0), seed=2)
    delta = model(4)
    delta["fc.weight"] = torch.zeros(96, 40)
    # In the round's basis, as a mean of replies is.
    right = shared[SHARED_PREFIX + "right/conv.weight"][:, 0]
    delta["conv.weight"] = torch.outer(torch.randn(16), right).reshape(16, 8, 3, 3)
    # Execute
    encoded, _ = codec.on_client(delta, broadcast_ctx(shared))
    got = codec.decode(wire(encoded), delta, broadcast_ctx(shared))
    # Assert: the deltas arrive, and each next basis is orthonormal, spans the moved
    # direction, and is not a set of coordinate axes (QR's choice for a zero factor).
    assert torch.allclose(got["fc.weight"], delta["fc.weight"])
    for key in ("fc.weight", "conv.weight"):
        basis = shared[SHARED_PREFIX + "left/" + key]
        assert torch.allclose(basis.T @ basis, torch.eye(3), atol=1e-5), key
        assert int((basis.abs() > 1e-6).sum()) > 3 * 3, key
    conv = delta["conv.weight"].reshape(16, -1)
    basis = shared[SHARED_PREFIX + "left/conv.weight"]
    assert torch.allclose(basis @ basis.T @ conv, conv, atol=1e-4)
    assert torch.allclose(got["conv.weight"], delta["conv.weight"], atol=1e-4)


def _downlink(codec: Subspace, initial: dict[str, torch.Tensor]) -> Downlink:
    params = {"rank": codec.rank, "bits": codec.bits, "bucket_size": 2048}
    spec = {"name": "subspace", "params": {**params, "error_feedback": False}, "state": {}}
    return Downlink(codec, spec, seed=7, initial=initial)


def test_clients_rebuild_the_chain_and_its_basis_from_deltas_or_the_whole_model():
    # Prepare: a 4-bit rank-2 chain toward a fixed target; client 0 receives every
    # version, client 1 every third, client 2 joins late and gets the model whole.
    codec = Subspace(rank=2, bits=4, error_feedback=False)
    initial, target = model(0), model(1)
    server = _downlink(codec, initial)
    own: dict[int, dict[str, torch.Tensor]] = {0: {}, 1: {}, 2: {}}
    gaps = []
    for version in range(60):
        view = server.advance(version, target)
        gaps.append(float((target["fc.weight"] - view["fc.weight"]).norm()))
        due = [0] + ([1] if version % 3 == 0 else []) + ([2] if version >= 30 else [])
        for cid in due:
            if version == 30 and cid == 2:
                server.synced[2] = None  # a client the server knows nothing of
            got = receive(server, cid, own[cid], initial, initial)
            server.settle(cid, True)
            # Assert: model and basis, bit for bit, as the server holds them.
            assert state_digest(got) == state_digest(view)
            kept = {k: v for k, v in own[cid].items() if k.startswith(SHARED_PREFIX)}
            assert state_digest(kept) == state_digest(server.shared)
    # Power iteration with the server's error feedback: the public model closes in
    # (more slowly a version than lowrank's exact factors, for half their bytes).
    assert gaps[-1] < gaps[0] / 5


def test_a_reply_without_a_basis_and_a_malformed_one_are_refused():
    codec = Subspace(rank=2)
    update = model(3)
    with pytest.raises(ValueError, match=r"needs federation\.downlink"):
        codec.on_client(update, reply_ctx({}))
    shared = codec.initial_shared(update, seed=0)
    encoded, _ = codec.on_client(update, reply_ctx(dict(shared)))
    short = dict(encoded)
    short[VALUES] = short[VALUES][:-1]
    with pytest.raises(ClientUpdateError, match="values"):
        decode_arrival([codec], short, update, 0, 1, shared)
    # A NaN update is sent as NaN, which the server refuses.
    bad = {**update, "fc.weight": torch.full((96, 40), float("nan"))}
    encoded, _ = codec.on_client(bad, reply_ctx(dict(shared)))
    with pytest.raises(ClientUpdateError, match="not finite"):
        decode_arrival([codec], wire(encoded), update, 0, 1, shared)


def test_subspace_without_its_downlink_or_with_another_rank_is_refused():
    codec = Subspace(rank=4)
    missing = compression_problems(
        transforms=[codec], backend="inprocess", root_seed=0, dpsgd=False
    )
    assert any("add federation.downlink" in p for p in missing)
    other = ComponentConfig(name="subspace", params={"rank": 2, "error_feedback": False})
    wrong = compression_problems(
        transforms=[codec], backend="inprocess", root_seed=0, dpsgd=False, downlink=other
    )
    assert any("must be equal" in p for p in wrong)
    same = ComponentConfig(name="subspace", params={"rank": 4, "error_feedback": False})
    assert not compression_problems(
        transforms=[codec], backend="inprocess", root_seed=0, dpsgd=False, downlink=same
    )


def test_a_wide_embedding_is_coded_when_its_two_sides_gain_on_average():
    # A 10 x 3136 label embedding at rank 10: lowrank would send it whole (its two
    # factors weigh more); here one round sends 10 x 10 coefficients, the next 3136 x 10.
    codec = Subspace(rank=10, bits=4, error_feedback=False)
    assert codec.rank_of(torch.Size((10, 3136))) == 10
    assert codec.rank_of(torch.Size((96,))) == 0
    x = {"embed": torch.randn(10, 3136, generator=torch.Generator().manual_seed(0))}
    shared = codec.initial_shared(x, seed=4)
    sizes = []
    for _ in range(2):
        encoded, _ = codec.on_client(x, reply_ctx(dict(shared)))
        sizes.append(encoded[VALUES].numel())
        broadcast, _ = codec.on_client(x, broadcast_ctx(shared))
        codec.decode(broadcast, x, broadcast_ctx(shared))
    assert sizes == [10 * 10 // 2, 3136 * 10 // 2]


def test_a_checkpoint_without_the_basis_or_with_another_shape_is_refused():
    codec = Subspace(rank=2, bits=4, error_feedback=False)
    server = _downlink(codec, model(0))
    state = server.state_dict()
    restored = _downlink(codec, model(0))
    restored.load_state_dict(state)
    assert restored.digest == server.digest
    with pytest.raises(ValueError, match=r"does not fit this experiment.*no subspace basis"):
        _downlink(codec, model(0)).load_state_dict({**state, "shared": {}})
    wrong = {k: torch.zeros(v.shape[0] + 1, v.shape[1]) for k, v in state["shared"].items()}
    with pytest.raises(ValueError, match=r"does not fit this experiment.*rows for"):
        _downlink(codec, model(0)).load_state_dict({**state, "shared": wrong})
