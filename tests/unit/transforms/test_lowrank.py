"""The low-rank codec: the optimal truncation, a contractive code, error feedback that
loses nothing, messages as small as the factors, and refusals of what is malformed."""

from __future__ import annotations

import pytest
import torch

from fedgen.assembly.compression import compression_problems
from fedgen.errors import ClientUpdateError
from fedgen.transforms.base import TransformContext
from fedgen.transforms.clip import NormClip
from fedgen.transforms.codec import decode_arrival
from fedgen.transforms.dp import ClientLevelDP
from fedgen.transforms.lowrank import SCALES, VALUES, LowRank
from fedgen.transforms.sparsify import residual_key
from fedgen.wire import Message, decode, encode


def ctx(round: int = 0, private: dict | None = None) -> TransformContext:
    return TransformContext(
        round=round,
        client_id=1,
        seed=3,
        num_clients=4,
        private=private if private is not None else {},
    )


def wire(encoded: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    return decode(encode(Message(encoded))).arrays


def layer_update(seed: int, scale: float = 0.01) -> dict[str, torch.Tensor]:
    """A linear layer, a convolution kernel, a bias and a step counter."""
    gen = torch.Generator().manual_seed(seed)
    return {
        "fc.weight": torch.randn(96, 40, generator=gen) * scale,
        "conv.weight": torch.randn(16, 8, 3, 3, generator=gen) * scale,
        "fc.bias": torch.randn(96, generator=gen) * scale,
        "steps": torch.tensor(5),
    }


def test_a_matrix_of_low_rank_round_trips_and_a_full_one_keeps_its_top_singular_values():
    # Prepare: an exactly rank-2 matrix, and a full-rank one.
    gen = torch.Generator().manual_seed(0)
    low = torch.randn(50, 2, generator=gen) @ torch.randn(2, 30, generator=gen)
    full = torch.randn(50, 30, generator=gen)
    codec = LowRank(2, bits=32, error_feedback=False)
    for matrix in (low, full):
        x = {"w": matrix}
        # Execute
        got = codec.decode(wire(codec.on_client(x, ctx())[0]), x, ctx())["w"]
        # Assert: the error is what Eckart-Young says the best rank-2 approximation
        # leaves: the norm of the singular values past the second.
        rest = torch.linalg.svdvals(matrix)[2:].norm()
        assert abs(float((got - matrix).norm()) - float(rest)) < 1e-4 * float(matrix.norm())
    assert torch.allclose(
        codec.decode(codec.on_client({"w": low}, ctx())[0], {"w": low}, ctx())["w"], low, atol=1e-5
    )


# Not at 2 bits: ternary factors can overshoot (measured: rank 1 of a random 96 x 40
# matrix sent with an error of norm 0.0621 against the matrix's 0.0617).
@pytest.mark.parametrize("bits", [3, 4, 8, 16, 32])
def test_the_code_is_contractive_and_at_32_bits_never_grows_the_norm(bits):
    # Prepare: updates of several scales (8 bits: the int8 scale follows the values).
    codec = LowRank(1, bits=bits, error_feedback=False)
    for trial in range(10):
        x = layer_update(trial, scale=10.0 ** (trial % 5 - 3))
        # Execute
        got = codec.decode(wire(codec.on_client(x, ctx())[0]), x, ctx())
        for key in ("fc.weight", "conv.weight", "fc.bias"):
            # Assert: closer to x than zero is (what error feedback needs), and a
            # projection's norm is within x's (what client-level DP's clip needs).
            assert (got[key] - x[key]).norm() < x[key].norm(), key
            if bits == 32:
                assert got[key].norm() <= x[key].norm() * (1 + 1e-5), key
    assert torch.equal(got["steps"], torch.tensor(5))


def test_error_feedback_conserves_what_was_sent_plus_the_residual():
    # Prepare
    codec = LowRank(1)
    private: dict[str, torch.Tensor] = {}
    first, second = layer_update(0), layer_update(1)
    # Execute: two rounds of one client.
    sent0 = codec.decode(codec.on_client(first, ctx(0, private))[0], first, ctx())
    left0 = {k: private[residual_key(k, "lowrank")].clone() for k in ("fc.weight", "fc.bias")}
    sent1 = codec.decode(codec.on_client(second, ctx(1, private))[0], first, ctx())
    # Assert: nothing is lost, only delayed.
    for k, left in left0.items():
        assert torch.allclose(sent0[k] + left, first[k], atol=1e-7)
        both = second[k] + left
        assert torch.allclose(sent1[k] + private[residual_key(k, "lowrank")], both, atol=1e-7)
    # A rank-1 code of a random 96 x 40 matrix leaves most of it for later.
    assert left0["fc.weight"].norm() > 0.5 * first["fc.weight"].norm()


def test_a_message_is_the_factors_in_a_byte_each_and_a_scale_per_column():
    # Prepare: a 256 x 256 matrix (256 KiB in float32) and 1,000 bias values.
    x = {"w": torch.randn(256, 256), "b": torch.randn(1000)}
    plain = len(encode(Message(x)))
    for rank in (1, 2, 4):
        codec = LowRank(rank, bucket_size=512, error_feedback=False)
        # Execute
        size = len(encode(Message(codec.on_client(x, ctx())[0])))
        # Assert: rank x (256 + 256) int8 numbers and 1,000 bias bytes, float32 scales
        # for 2 x rank columns and 2 buckets, in two arrays whatever the tensors.
        payload = rank * 512 + 1000 + 4 * (2 * rank + 2)
        assert payload <= size <= payload + 300
        assert plain / size > 100 / rank


# 4 bits: levels -7..7, two to a byte; 3 bits: levels -3..3 in one bit stream.
@pytest.mark.parametrize(("bits", "top", "nbytes"), [(4, 7, 131), (3, 3, 98)])
def test_levels_below_a_byte_pack_across_tensors(bits, top, nbytes):
    # Prepare: two tensors whose numbers (factors and values) count an odd total.
    x = {"w": torch.randn(64, 64), "b": torch.randn(5)}
    eight = LowRank(2, bits=8, error_feedback=False)
    coarse = LowRank(2, bits=bits, error_feedback=False)
    # Execute
    sent8, sent = eight.on_client(x, ctx())[0], coarse.on_client(x, ctx())[0]
    got = coarse.decode(wire(sent), x, ctx())
    # Assert: 2 x (64 + 64) + 5 = 261 numbers in ceil(261 x bits / 8) bytes, the scales
    # as at 8 bits; each number within half a step (its segment's largest magnitude /
    # top) of 8 bits'.
    assert sent[VALUES].dtype == torch.uint8 and sent[VALUES].numel() == nbytes
    torch.testing.assert_close(sent[SCALES] * top, sent8[SCALES] * 127)
    assert (got["b"] - x["b"]).abs().max() <= x["b"].abs().max() / (2 * top) + 1e-6


def test_thin_and_empty_tensors_are_sent_value_by_value():
    codec = LowRank(4, bits=32, error_feedback=False)
    assert codec.rank_of(torch.Size([1, 3136])) == 0  # rank 1 would send 3,137 numbers
    assert codec.rank_of(torch.Size([64, 32, 4, 4])) == 4
    assert codec.rank_of(torch.Size([7])) == 0
    x = {"row": torch.randn(1, 300), "none": torch.zeros(0, 5), "v": torch.randn(3)}
    got = codec.decode(wire(codec.on_client(x, ctx())[0]), x, ctx())
    assert all(torch.equal(got[k], x[k]) for k in x)


def test_a_non_finite_update_is_refused_by_the_server_not_factored():
    x = layer_update(0)
    x["fc.weight"][3, 4] = float("nan")
    sent, _ = LowRank(2, error_feedback=False).on_client(x, ctx())
    with pytest.raises(ClientUpdateError, match="not finite"):
        decode_arrival([LowRank(2)], wire(sent), x, round=0, client_id=1)


@pytest.mark.parametrize(
    ("change", "message"),
    [
        (lambda s: s.__setitem__(VALUES, s[VALUES][:-1]), "values"),
        (lambda s: s.__setitem__(VALUES, s[VALUES].float()), "int8"),
        (lambda s: s.__setitem__(SCALES, -s[SCALES]), "negative"),
        (lambda s: s.pop(SCALES), "missing"),
        (lambda s: s.__setitem__("fc.bias", torch.zeros(96)), "both"),
        (lambda s: s[VALUES].fill_(255), "level beyond"),
    ],
    ids=["short", "dtype", "negative-scale", "missing", "plain-and-encoded", "level"],
)
def test_a_malformed_encoding_is_a_client_update_error(change, message):
    x = layer_update(0)
    bits = 4 if message == "level beyond" else 8
    sent, _ = LowRank(2, bits=bits, error_feedback=False).on_client(x, ctx())
    change(sent)
    with pytest.raises(ClientUpdateError, match=message):
        decode_arrival([LowRank(2, bits=bits)], sent, x, round=0, client_id=1)


def test_client_level_dp_takes_only_the_code_that_keeps_the_clip_bound():
    def problems(codec):
        pipeline = [NormClip(1.0), codec, ClientLevelDP(noise_multiplier=1.0)]
        return compression_problems(
            transforms=pipeline, backend="inprocess", root_seed=0, dpsgd=False
        )

    assert problems(LowRank(2, bits=32, error_feedback=False)) == []
    assert any("client_dp" in p for p in problems(LowRank(2)))
    assert any("client_dp" in p for p in problems(LowRank(2, bits=8, error_feedback=False)))


def test_a_rank_per_name_prefix_codes_each_network_at_its_own():
    # Prepare: a "generator" matrix at rank 2 (the default) and a "discriminator" one
    # sent value by value (rank 0), its "discriminator.embed" at rank 1 (longest prefix).
    gen = torch.Generator().manual_seed(0)
    x = {
        "generator.w": torch.randn(64, 48, generator=gen),
        "discriminator.w": torch.randn(64, 48, generator=gen),
        "discriminator.embed.weight": torch.randn(10, 300, generator=gen),
    }
    codec = LowRank(
        2, bits=32, error_feedback=False, ranks={"discriminator.": 0, "discriminator.embed": 1}
    )
    # Execute
    sent = codec.on_client(x, ctx())[0]
    got = codec.decode(wire(sent), x, ctx())
    # Assert: the numbers sent are each tensor's own code's, and the value-by-value
    # tensor arrives exactly; the others are their best rank-r approximations.
    assert sent[VALUES].numel() == 2 * (64 + 48) + 64 * 48 + 1 * (10 + 300)
    assert torch.equal(got["discriminator.w"], x["discriminator.w"])
    for key, rank in (("generator.w", 2), ("discriminator.embed.weight", 1)):
        u, s, vh = torch.linalg.svd(x[key], full_matrices=False)
        best = (u[:, :rank] * s[:rank]) @ vh[:rank]
        assert torch.allclose(got[key], best, atol=1e-4), key


def test_a_negative_rank_for_a_prefix_is_refused():
    with pytest.raises(ValueError, match="ranks must be >= 0"):
        LowRank(2, ranks={"discriminator.": -1})
