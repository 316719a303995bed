"""Update codecs: round trips, unbiasedness, error feedback, real byte counts, refusals."""

from __future__ import annotations

import pytest
import torch

from fedgen.errors import ClientUpdateError
from fedgen.transforms.base import TransformContext
from fedgen.transforms.cast import CastCodec
from fedgen.transforms.clip import UNCLIPPED_KEY
from fedgen.transforms.codec import CODEC_PREFIX, decode_arrival, part_name
from fedgen.transforms.lowrank import LowRank
from fedgen.transforms.quantize import QSGD, StochasticQuantization, buckets, unpadded
from fedgen.transforms.sign import SCALES, ScaledSign
from fedgen.transforms.sparsify import RandomMask, TopK, kept_count, residual_key
from fedgen.wire import Message, decode, encode

#: A small model's update: a matrix (several buckets), a vector, an integer buffer.
REFERENCE = {
    "net.w": torch.zeros(40, 30),
    "net.b": torch.zeros(7),
    "net.steps": torch.zeros((), dtype=torch.int64),
}


def update(seed: int = 0) -> dict[str, torch.Tensor]:
    gen = torch.Generator().manual_seed(seed)
    return {
        "net.w": torch.randn(40, 30, generator=gen) * 0.01,
        "net.b": torch.randn(7, generator=gen),
        "net.steps": torch.tensor(3),
    }


def ctx(seed: int = 11, round: int = 0, private: dict | None = None) -> TransformContext:
    return TransformContext(
        round=round,
        client_id=2,
        seed=seed,
        num_clients=4,
        private=private if private is not None else {},
    )


def wire(encoded: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """The update as it arrives: encoded to bytes and decoded again."""
    return decode(encode(Message(encoded))).arrays


ALL = [
    CastCodec("float16"),
    CastCodec("bfloat16"),
    StochasticQuantization(8),
    StochasticQuantization(4),
    StochasticQuantization(2),
    StochasticQuantization(1),
    QSGD(8),
    QSGD(4),
    QSGD(2),
    TopK(0.1),
    TopK(0.1, error_feedback=False),
    RandomMask(0.25),
    RandomMask(0.25, rescale=True),
    ScaledSign(),
    ScaledSign(0.25, bucket_size=64),
    ScaledSign(0.5, error_feedback=False),
    LowRank(2),
    LowRank(1, bits=16),
    LowRank(4, bits=4),
    LowRank(8, bits=2),
    LowRank(4, bits=32, error_feedback=False),
]


@pytest.mark.parametrize("codec", ALL, ids=lambda c: f"{c.codec_name}-{vars(c)}")
def test_every_codec_decodes_across_the_wire_to_the_model_shapes(codec):
    # Prepare / Execute
    sent, metrics = codec.on_client(update(), ctx())
    received = decode_arrival([codec], wire(sent), REFERENCE, round=0, client_id=2)
    # Assert: the model's tensors, the integer buffer untouched, fewer bytes than float32.
    assert received is not None and set(received) == set(REFERENCE)
    for key, ref in REFERENCE.items():
        assert received[key].shape == ref.shape and received[key].dtype == ref.dtype
    assert torch.equal(received["net.steps"], torch.tensor(3))
    assert 0 < metrics["encoded_fraction"] < 0.6
    assert all(not k.startswith(("net.w", "net.b")) for k in sent)


@pytest.mark.parametrize(
    "codec",
    [TopK(1.0), TopK(1.0, error_feedback=False), RandomMask(1.0)],
    # Stable names: ids from repr hold memory addresses, which differ between processes.
    ids=["topk-ef", "topk", "random_mask"],
)
def test_sparsifiers_keeping_everything_are_lossless(codec):
    sent, _ = codec.on_client(update(), ctx())
    received = decode_arrival([codec], wire(sent), REFERENCE, 0, 2)
    assert received is not None
    assert all(torch.equal(received[k], update()[k]) for k in REFERENCE)


@pytest.mark.parametrize("dtype", ["float16", "bfloat16"])
def test_a_cast_is_exact_on_its_grid_and_rounds_to_nearest_off_it(dtype):
    # Prepare: values already representable in the target type, and arbitrary ones.
    codec = CastCodec(dtype)  # type: ignore[arg-type]
    target = {"float16": torch.float16, "bfloat16": torch.bfloat16}[dtype]
    on_grid = {
        k: v.to(target).to(v.dtype) if v.is_floating_point() else v for k, v in update().items()
    }
    # Execute
    exact = decode_arrival([codec], wire(codec.on_client(on_grid, ctx())[0]), REFERENCE, 0, 2)
    near = decode_arrival([codec], wire(codec.on_client(update(), ctx())[0]), REFERENCE, 0, 2)
    # Assert
    assert exact is not None and near is not None
    assert all(torch.equal(exact[k], on_grid[k]) for k in REFERENCE)
    info = torch.finfo(target)
    # Half an ulp relative error, or half the subnormal spacing (float16's tiny values).
    atol = info.smallest_normal * info.eps
    assert torch.allclose(near["net.w"], update()["net.w"], rtol=info.eps / 2, atol=atol)


@pytest.mark.parametrize(
    "codec",
    [
        StochasticQuantization(8),
        StochasticQuantization(4),
        StochasticQuantization(2),
        StochasticQuantization(1),
        QSGD(8),
        QSGD(4),
        QSGD(2),
    ],
    ids=lambda c: f"{c.codec_name}-{c.bits}",
)
def test_stochastic_quantizers_are_unbiased(codec):
    # Prepare: one update, quantized with 1,000 independent rounding seeds.
    x = update()
    draws = 1000
    total = {k: torch.zeros_like(REFERENCE[k], dtype=torch.float64) for k in ("net.w", "net.b")}
    # Execute
    for seed in range(draws):
        got = codec.decode(codec.on_client(x, ctx(seed=seed))[0], REFERENCE, ctx())
        for k in total:
            total[k] += got[k].double()
    # Assert: stochastic rounding between two levels a step apart has variance at most
    # step^2 / 4, so each coordinate's mean is within 5 standard errors, 5 * step / 2 /
    # sqrt(draws) = 8% of a step, of the true value (fixed seeds: deterministic).
    # Rounding to nearest would be off by up to half a step.
    for k in total:
        if isinstance(codec, QSGD):
            step = float(x[k].norm()) / codec.levels  # >= every bucket's norm / s
        else:
            step = float(x[k].max() - x[k].min()) / ((1 << codec.bits) - 1)
        error = (total[k] / draws - x[k].double()).abs()
        assert float(error.max()) <= 5 * step / 2 / draws**0.5, k


def test_a_rescaled_random_mask_is_unbiased_over_rounds():
    codec = RandomMask(0.25, rescale=True)
    x, draws = update(), 3000
    total = torch.zeros(7, dtype=torch.float64)
    for r in range(draws):
        total += codec.decode(codec.on_client(x, ctx(round=r))[0], REFERENCE, ctx(round=r))[
            "net.b"
        ].double()
    # Each coordinate is kept in a quarter of the rounds and scaled by 7/2 (2 of 7 kept).
    mean = total / draws
    assert torch.allclose(mean, x["net.b"].double(), rtol=0.15, atol=0.02)


def test_a_quantized_message_is_as_small_as_its_bits():
    # Prepare: one float32 tensor of 65,536 values (256 KiB).
    x = {"net.w": torch.randn(256, 256)}
    plain = len(encode(Message(x)))
    for bits in (8, 4, 2, 1):
        # Execute
        sent, _ = StochasticQuantization(bits, bucket_size=512).on_client(x, ctx())
        size = len(encode(Message(sent)))
        # Assert: bits/32 of float32, plus 8 bytes of scale per 512 values and a header.
        payload = 65536 * bits // 8 + 8 * 128
        assert payload <= size <= payload + 400
        # bits a value plus the scales' 64 bits per 512 values (and a header) of 32
        assert size < plain * (bits + 64 / 512) / 32 + 400


@pytest.mark.parametrize(
    "codec", [TopK(0.05), ScaledSign(0.05, bucket_size=16)], ids=["topk", "sign"]
)
def test_error_feedback_conserves_what_was_sent_plus_the_residual(codec):
    # Prepare
    private: dict[str, torch.Tensor] = {}
    first, second = update(0), update(1)
    name = codec.codec_name
    # Execute: two rounds of one client.
    sent0 = codec.decode(codec.on_client(first, ctx(private=private))[0], REFERENCE, ctx())
    residual0 = {k: private[residual_key(k, name)].clone() for k in ("net.w", "net.b")}
    sent1 = codec.decode(
        codec.on_client(second, ctx(round=1, private=private))[0], REFERENCE, ctx(round=1)
    )
    # Assert: nothing is lost, only delayed (to float rounding: a sign's residual is a
    # difference of floats).
    for k in ("net.w", "net.b"):
        residual1 = private[residual_key(k, name)]
        assert torch.allclose(sent0[k] + residual0[k], first[k], atol=1e-6)
        assert torch.allclose(sent1[k] + residual1, second[k] + residual0[k], atol=1e-6)
        assert int((sent0[k] != 0).sum()) == max(1, -(-first[k].numel() * 5 // 100))


@pytest.mark.parametrize(
    "codec",
    [TopK(0.05), ScaledSign(0.05, bucket_size=16), LowRank(2, bits=4)],
    ids=["topk", "sign", "lowrank"],
)
def test_a_non_finite_update_leaves_a_finite_residual(codec):
    # The server rejects a NaN update; its residual must not turn every later reply NaN
    # (top-k sends the NaN, the largest, and keeps the rest; the others keep the residual
    # from before).
    private: dict[str, torch.Tensor] = {}
    codec.on_client(update(0), ctx(private=private))
    poisoned = update(1)
    poisoned["net.w"][0, 0] = float("nan")
    codec.on_client(poisoned, ctx(round=1, private=private))
    assert all(bool(torch.isfinite(v).all()) for v in private.values())
    later, _ = codec.on_client(update(2), ctx(round=2, private=private))
    assert all(bool(torch.isfinite(v).all()) for v in later.values() if v.is_floating_point())


def test_a_scaled_sign_is_contractive_and_never_grows_the_norm():
    # Prepare: updates of several scales and shapes, a few coordinates exactly zero.
    gen = torch.Generator().manual_seed(3)
    for trial in range(20):
        x = {"net.w": torch.randn(40, 30, generator=gen) * 10.0 ** (trial % 5 - 2)}
        x["net.w"][0, :5] = 0.0
        for codec in (ScaledSign(bucket_size=64), ScaledSign(0.3, error_feedback=False)):
            # Execute
            got = codec.decode(codec.on_client(x, ctx(round=trial))[0], x, ctx(round=trial))
            # Assert: closer to x than zero is (what error feedback needs to converge),
            # and the norm within x's (what client-level DP's clip bound needs).
            assert (got["net.w"] - x["net.w"]).norm() < x["net.w"].norm()
            assert got["net.w"].norm() <= x["net.w"].norm() * (1 + 1e-6)
    # The optimal scale: the bucket's mean magnitude.
    x = {"net.w": torch.tensor([[3.0, -1.0, 2.0, -2.0]])}
    sent, _ = ScaledSign(bucket_size=4, error_feedback=False).on_client(x, ctx())
    assert torch.equal(sent[SCALES], torch.tensor([2.0]))


def test_a_sign_update_round_trips_empty_and_single_value_tensors():
    x = {"a": torch.zeros(0), "b": torch.tensor([-0.5]), "c": torch.randn(3, 0, 2)}
    codec = ScaledSign(0.5, bucket_size=4)
    got = codec.decode(codec.on_client(x, ctx())[0], x, ctx())
    assert got["a"].shape == (0,) and got["c"].shape == (3, 0, 2)
    assert torch.equal(got["b"], torch.tensor([-0.5]))  # one value: its own magnitude


def test_a_sign_message_is_a_bit_a_sent_value():
    # Prepare: 65,536 float32 values (256 KiB) in 32 tensors, as a model has many.
    x = {f"net.{i}.w": torch.randn(64, 32) for i in range(32)}
    plain = len(encode(Message(x)))
    for fraction in (1.0, 0.5, 0.25):
        # Execute
        sent, _ = ScaledSign(fraction, error_feedback=False).on_client(x, ctx())
        size = len(encode(Message(sent)))
        # Assert: a bit per sent value and a float32 scale per tensor (2,048 values or
        # fewer each), in two arrays whatever the tensors; the support is drawn from the
        # shared seed, not sent.
        kept = int(65536 * fraction)
        payload = kept // 8 + 4 * 32
        assert payload <= size <= payload + 400
        assert size < plain * fraction / 32 * 1.01 + 400


def test_error_feedback_without_a_private_store_is_an_error_not_a_silent_loss():
    with pytest.raises(ValueError, match="error_feedback: false"):
        TopK(0.05).on_client(
            update(), TransformContext(round=0, client_id=1, seed=0, num_clients=2)
        )


def test_without_error_feedback_nothing_is_kept():
    private: dict[str, torch.Tensor] = {}
    TopK(0.05, error_feedback=False).on_client(update(), ctx(private=private))
    assert private == {}


def test_the_random_mask_is_shared_by_clients_and_changes_with_round_and_seed():
    codec, other = RandomMask(0.1), RandomMask(0.1)
    other.bind_seed(1)
    a = codec.mask("net.w", 1200, round=3)
    assert torch.equal(a, RandomMask(0.1).mask("net.w", 1200, round=3))
    assert not torch.equal(a, codec.mask("net.w", 1200, round=4))
    assert not torch.equal(a, other.mask("net.w", 1200, round=3))
    # Only the values travel: no index array in the message.
    sent, _ = codec.on_client(update(), ctx(round=3))
    assert set(sent) == {part_name("net.w", "values"), part_name("net.b", "values"), "net.steps"}


def test_side_channels_of_other_transforms_pass_through():
    x = {**update(), UNCLIPPED_KEY: torch.tensor([0.5])}
    sent, _ = QSGD(4).on_client(x, ctx())
    received = decode_arrival([QSGD(4)], wire(sent), REFERENCE, 0, 2)
    assert received is not None and torch.equal(received[UNCLIPPED_KEY], torch.tensor([0.5]))


def test_quantization_draws_are_reproducible_from_the_client_seed():
    codec = StochasticQuantization(2)
    a, _ = codec.on_client(update(), ctx(seed=5))
    b, _ = codec.on_client(update(), ctx(seed=5))
    c, _ = codec.on_client(update(), ctx(seed=6))
    key = part_name("net.w", "q")
    assert torch.equal(a[key], b[key]) and not torch.equal(a[key], c[key])


def malformed(codec, change):
    sent, _ = codec.on_client(update(), ctx())
    change(sent)
    return sent


@pytest.mark.parametrize(
    ("codec", "change", "message"),
    [
        (
            TopK(0.1),
            lambda s: s.__setitem__(
                part_name("net.w", "index"), torch.zeros(3, dtype=torch.uint16)
            ),
            "index",
        ),
        (
            TopK(0.1),
            lambda s: s[part_name("net.b", "index")].fill_(200),
            "past the tensor",
        ),
        (QSGD(4), lambda s: s.pop(part_name("net.b", "norm")), "parts"),
        (StochasticQuantization(4), lambda s: s.__setitem__("net.w", torch.zeros(40, 30)), "both"),
        (
            CastCodec(),
            lambda s: s.__setitem__(part_name("net.w", "v"), torch.zeros(40, 30)),
            "float16",
        ),
        (
            RandomMask(0.1),
            lambda s: s.__setitem__(part_name("ghost", "values"), torch.zeros(1)),
            "lacks",
        ),
        (QSGD(2), lambda s: s[part_name("net.b", "q")].fill_(255), "level beyond"),
        (
            ScaledSign(error_feedback=False),
            lambda s: s[SCALES].fill_(float("nan")),
            "not finite",
        ),
    ],
    ids=[
        "index-count",
        "index-range",
        "missing-part",
        "plain-and-encoded",
        "dtype",
        "extra",
        "level",
        "sign-scale",
    ],
)
def test_a_malformed_encoding_is_a_client_update_error(codec, change, message):
    sent = malformed(codec, change)
    with pytest.raises(ClientUpdateError, match=message):
        decode_arrival([codec], sent, REFERENCE, 0, 2)


def test_encoded_names_are_side_channels_not_model_keys():
    assert part_name("net.w", "q") == f"{CODEC_PREFIX}net.w/q"
    assert CODEC_PREFIX.startswith("__")


def test_a_short_last_bucket_spans_its_own_values_not_the_zero_padding():
    # Prepare: 7 values in buckets of 4; the second bucket's fourth slot is padding.
    x = {"a": torch.tensor([1.0, 2.0, 3.0, 4.0, 5.0, 5.5, 6.0])}
    codec = StochasticQuantization(1, bucket_size=4)
    # Execute
    sent, _ = codec.on_client(x, ctx())
    got = codec.decode(sent, x, ctx())
    # Assert: the second bucket's minimum 5 and step 1 (not 0 and 6), in the same bytes.
    assert torch.equal(sent[part_name("a", "scale")], torch.tensor([1.0, 3.0, 5.0, 1.0]))
    assert sent[part_name("a", "q")].numel() == 1
    assert float(got["a"][4:].min()) >= 5.0 and float(got["a"][4:].max()) <= 6.0
    # A tensor shorter than its bucket is one bucket of its own values.
    one, _ = codec.on_client({"a": torch.tensor([5.0, 5.5, 6.0])}, ctx())
    assert torch.equal(one[part_name("a", "scale")], torch.tensor([5.0, 1.0]))


EMPTY_CAPABLE = [
    StochasticQuantization(4),
    QSGD(4),
    QSGD(2),
    TopK(0.5),
    RandomMask(0.5),
    RandomMask(0.5, rescale=True),
    ScaledSign(0.5, bucket_size=4),
]


@pytest.mark.parametrize(
    "codec", EMPTY_CAPABLE, ids=lambda c: f"{c.codec_name}-{getattr(c, 'rescale', '')}"
)
def test_empty_tensors_round_trip_to_empty_tensors_of_their_shape(codec):
    x = {"a": torch.zeros(0), "c": torch.zeros(3, 0, 2), "b": torch.tensor([-0.5, 0.25])}
    got = decode_arrival([codec], wire(codec.on_client(x, ctx())[0]), x, 0, 2)
    assert got is not None
    assert got["a"].shape == (0,) and got["c"].shape == (3, 0, 2)
    assert got["b"].shape == (2,)


def test_any_error_decoding_a_client_update_is_a_client_update_error():
    # A decoder that fails in a way nobody foresaw must reject the update, not end the run.
    class Fragile(RandomMask):
        def decode_tensor(self, key, parts, reference, ctx):
            return 1 / 0

    codec = Fragile(0.5)
    with pytest.raises(ClientUpdateError, match="division by zero"):
        decode_arrival([codec], codec.on_client(update(), ctx())[0], REFERENCE, 0, 2)


@pytest.mark.parametrize(
    "codec",
    [*(StochasticQuantization(b, bucket_size=64) for b in (1, 2, 4, 8)), QSGD(2), QSGD(4), QSGD(8)],
    ids=lambda c: f"{c.codec_name}-{c.bits}",
)
@pytest.mark.parametrize("bad", [float("nan"), float("inf"), -float("inf")])
def test_a_non_finite_update_is_sent_and_rejected_by_the_server_as_not_finite(codec, bad):
    # Prepare: one bad value in one bucket of the matrix; the rest of the update is fine.
    poisoned = update()
    poisoned["net.w"][3, 7] = bad
    # Execute: the client encodes it (as topk, sign and lowrank do) ...
    sent, _ = codec.on_client(poisoned, ctx())
    # Assert: ... and the server refuses it, naming why.
    with pytest.raises(ClientUpdateError, match="NaN or Inf"):
        decode_arrival([codec], wire(sent), REFERENCE, 0, 2)


@pytest.mark.parametrize(
    "make",
    [
        lambda size: StochasticQuantization(4, bucket_size=size),
        lambda size: QSGD(4, bucket_size=size),
        lambda size: ScaledSign(bucket_size=size, error_feedback=False),
    ],
    ids=["quantize", "qsgd", "sign"],
)
def test_a_bucket_larger_than_a_tensor_is_the_tensor(make):
    # Prepare: buckets of a million values, and of exactly the largest tensor's 1,200.
    huge, exact = make(10**6), make(1200)
    # Execute
    sent, _ = huge.on_client(update(), ctx())
    same, _ = exact.on_client(update(), ctx())
    got = decode_arrival([huge], wire(sent), REFERENCE, 0, 2)
    # Assert: no row of a million padded values, and the very same message.
    assert buckets(torch.ones(7), 10**8).shape == (1, 7)
    assert unpadded(7, 10**8).shape == (1, 7)
    assert sent.keys() == same.keys() and all(torch.equal(sent[k], same[k]) for k in sent)
    assert got is not None and got["net.b"].shape == (7,)


def test_kept_count_takes_the_fraction_as_the_decimal_it_is_written_as():
    # ceil(0.07 * 100) is 8 in floating point (0.07 * 100 == 7.000000000000001).
    assert kept_count(100, 0.07) == 7
    assert kept_count(1000, 0.07) == 70
    assert kept_count(100, 0.071) == 8
    assert kept_count(3, 1 / 3) == 1
    assert kept_count(10**9, 0.07) == 7 * 10**7
    assert kept_count(100, 1e-9) == 1 and kept_count(5, 1.0) == 5
    # Client and server draw supports of that size.
    assert RandomMask(0.07).mask("net.w", 100, round=0).numel() == 7
