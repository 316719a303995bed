"""fedgen.wire: messages encode and decode exactly, in the documented layout, and hostile
bytes raise only WireError; the backends send these messages and count their bytes."""

from __future__ import annotations

import json
import math
import struct

import numpy as np
import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from fedgen import wire
from fedgen.engine.backends.base import LocalWork
from fedgen.engine.backends.local_training import (
    job_message,
    reply_message,
    result_from_reply,
    work_from_job,
)
from fedgen.errors import FedgenError
from fedgen.privacy.noise_key import client_noise_key
from fedgen.transforms.clip import NormClip
from fedgen.transforms.secagg import SecureAggregation
from fedgen.types import ClientInstruction, ClientResult
from fedgen.wire import Message, WireError, decode, encode, message_nbytes

PROPERTY = settings(max_examples=200, deadline=None, suppress_health_check=[HealthCheck.too_slow])

#: Each wire dtype as numpy reads it, little-endian; the ones numpy lacks as raw bits.
NUMPY = {
    "bool": "?",
    "uint8": "u1",
    "int8": "i1",
    "int16": "<i2",
    "int32": "<i4",
    "int64": "<i8",
    "uint16": "<u2",
    "uint32": "<u4",
    "uint64": "<u8",
    "float16": "<f2",
    "float32": "<f4",
    "float64": "<f8",
    "complex64": "<c8",
    "complex128": "<c16",
    "bfloat16": "<u2",
    "float8_e4m3fn": "u1",
    "float8_e5m2": "u1",
}
#: torch dtypes numpy cannot hold, read as the unsigned integers of their bits.
BITS = {"bfloat16": torch.int16, "float8_e4m3fn": torch.uint8, "float8_e5m2": torch.uint8}
SHAPES = [(), (0,), (1,), (7,), (3, 0, 2), (2, 3), (1, 1, 1, 5), (4, 1, 3)]


def bits(t: torch.Tensor) -> bytes:
    """The tensor's elements as bytes in C order (native order: little-endian here)."""
    t = t.detach().contiguous().reshape(-1)
    return t.view(torch.uint8).numpy().tobytes() if t.numel() else b""


def assert_same(a: dict[str, torch.Tensor], b: dict[str, torch.Tensor]) -> None:
    """Same names in the same order, and each array identical in dtype, shape and bits."""
    assert list(a) == list(b)
    for k in a:
        assert a[k].dtype == b[k].dtype and a[k].shape == b[k].shape, k
        assert bits(a[k]) == bits(b[k]), k


def random_tensor(dtype: torch.dtype, shape: tuple[int, ...], seed: int) -> torch.Tensor:
    """Every bit pattern is fair (NaN payloads, -0.0, subnormals); bool only 0 or 1."""
    n = math.prod(shape) * torch.empty((), dtype=dtype).element_size()
    raw = torch.randint(
        0, 256, (n,), dtype=torch.uint8, generator=torch.Generator().manual_seed(seed)
    )
    if dtype == torch.bool:
        raw = raw % 2
    return raw.view(dtype).reshape(shape)


def align(n: int) -> int:
    return (n + 7) // 8 * 8


def frame(header: bytes | str, payload: bytes = b"", version: int = 1) -> bytes:
    """Bytes with a valid preamble around any header text (for lying headers)."""
    if isinstance(header, str):
        header = header.encode()
    start = 16 + len(header)
    return (
        struct.pack("<6sHQ", b"FGWIRE", version, len(header))
        + header
        + bytes(align(start) - start)
        + payload
    )


def canonical(value: object) -> str:
    return json.dumps(value, sort_keys=True, separators=(",", ":"), ensure_ascii=True)


# -- round trips ------------------------------------------------------------------------


@pytest.mark.parametrize("name", sorted(wire.DTYPES))
def test_every_dtype_and_odd_shape_round_trips_bit_for_bit(name):
    # Prepare
    dtype = wire.DTYPES[name]
    arrays = {f"{name}{list(s)}": random_tensor(dtype, s, i) for i, s in enumerate(SHAPES)}
    # Execute
    out = decode(encode(Message(arrays, {"dtype": name})))
    # Assert
    assert_same(out.arrays, arrays)
    assert out.meta == {"dtype": name}


def test_nan_payloads_negative_zero_infinities_and_subnormals_keep_their_bits():
    # Prepare: NaNs with sign and payload bits set, -0.0, +-inf, the smallest subnormal.
    def from_bits(values: list[int], unsigned: type, dtype: torch.dtype) -> torch.Tensor:
        return torch.from_numpy(np.array(values, dtype=unsigned)).view(dtype)

    f32 = from_bits(
        [0x7FC00001, 0xFFC12345, 0x7F800001, 0x80000000, 0x7F800000, 0xFF800000, 0x00000001],
        np.uint32,
        torch.float32,
    )
    arrays = {
        "f32": f32,
        "f64": from_bits([0x7FF8000000000123, 0x8000000000000000, 1], np.uint64, torch.float64),
        "f16": from_bits([0x7E01, 0x8000, 0xFC00, 0x0001], np.uint16, torch.float16),
        "bf16": from_bits([0x7FC1, 0x8000, 0x0001], np.uint16, torch.bfloat16),
        "c64": torch.complex(f32, f32.flip(0)),
    }
    # Execute
    out = decode(encode(Message(arrays)))
    # Assert
    assert_same(out.arrays, arrays)
    assert torch.signbit(out.arrays["f32"][3]) and torch.isnan(out.arrays["f32"][0])


def test_meta_keeps_ints_floats_negative_zero_unicode_and_lone_surrogates():
    meta = {
        "i": 2**70,
        "f": 1.0,
        "z": -0.0,
        "tiny": 5e-324,
        "s": "é ✓ \ud800",
        "nested": {"list": [None, True, False, [], {}], "": "empty key"},
    }
    out = decode(encode(Message({"\ud800 name": torch.zeros(1)}, meta)))
    assert canonical(out.meta) == canonical(meta)
    assert type(out.meta["f"]) is float and type(out.meta["i"]) is int
    assert list(out.arrays) == ["\ud800 name"]


def test_non_contiguous_grad_conjugate_and_expanded_tensors_send_their_values():
    base = torch.arange(12.0).reshape(3, 4)
    arrays = {
        "transposed": base.t(),
        "grad": base.clone().requires_grad_(),
        "conj": torch.complex(base, base).conj(),
        "expanded": torch.tensor([1.0, 2.0]).expand(3, 2),
        "sliced": base[:, 1::2],
    }
    out = decode(encode(Message(arrays)))
    for k, t in arrays.items():
        assert torch.equal(out.arrays[k], t.detach().resolve_conj()), k
        assert out.arrays[k].is_contiguous() and not out.arrays[k].requires_grad


def test_decoded_tensors_own_their_memory():
    # Prepare
    blob = bytearray(encode(Message({"w": torch.arange(6.0), "b": torch.ones(2, 2)})))
    out = decode(blob)
    before = {k: v.clone() for k, v in out.arrays.items()}
    # Execute: the sender's buffer is reused for something else.
    blob[:] = bytes(len(blob))
    # Assert: the decoded tensors did not change, and they can be written to.
    assert_same(out.arrays, before)
    out.arrays["w"] += 1


# -- the documented layout --------------------------------------------------------------


def test_a_small_message_is_exactly_the_documented_bytes():
    # Prepare: the layout of the module docstring, written out by hand.
    header = (
        b'{"arrays":[{"dtype":"float32","name":"w","nbytes":12,"offset":0,"shape":[3]},'
        b'{"dtype":"int64","name":"n","nbytes":8,"offset":16,"shape":[]}],"meta":{"round":2}}'
    )
    expected = (
        b"FGWIRE"
        + struct.pack("<H", 1)
        + struct.pack("<Q", len(header))
        + header
        + bytes(align(16 + len(header)) - 16 - len(header))
        + struct.pack("<3f", 1.5, -2.0, 0.25)
        + bytes(4)
        + struct.pack("<q", -7)
    )
    message = Message({"w": torch.tensor([1.5, -2.0, 0.25]), "n": torch.tensor(-7)}, {"round": 2})
    # Execute / Assert
    assert encode(message) == expected
    assert message_nbytes(message.arrays, message.meta) == message.nbytes == len(expected)


def test_messages_of_one_layout_share_the_arrays_header_and_keep_their_own_meta():
    # The arrays' half of the header is cached by layout (names, dtypes, shapes); the
    # header stays the canonical JSON of the whole, message by message.
    for i, meta in enumerate([{"round": 1}, {"round": 2, "note": "é\u2028"}, {}]):
        arrays = {"w": torch.full((2, 3), float(i)), "ü": torch.zeros((), dtype=torch.int8)}
        data = encode(Message(arrays, meta))
        (length,) = struct.unpack_from("<Q", data, 8)
        entries = [
            {"dtype": "float32", "name": "w", "nbytes": 24, "offset": 0, "shape": [2, 3]},
            {"dtype": "int8", "name": "ü", "nbytes": 1, "offset": 24, "shape": []},
        ]
        canonical = json.dumps(
            {"arrays": entries, "meta": meta}, sort_keys=True, separators=(",", ":")
        )
        assert data[16 : 16 + length] == canonical.encode("ascii")
        out = decode(data)
        assert out.meta == meta and all(torch.equal(out.arrays[k], v) for k, v in arrays.items())


def independent_decode(data: bytes) -> tuple[dict[str, np.ndarray], dict]:
    """A reader written from the docstring's layout alone, with struct and numpy."""
    magic, version, length = struct.unpack_from("<6sHQ", data, 0)
    assert (magic, version) == (b"FGWIRE", 1)
    header = json.loads(data[16 : 16 + length])
    start = align(16 + length)
    assert data[16 + length : start] == bytes(start - 16 - length)
    arrays, end = {}, start
    for entry in header["arrays"]:
        at = start + entry["offset"]
        assert at == end and at % 8 == 0
        raw = data[at : at + entry["nbytes"]]
        arrays[entry["name"]] = np.frombuffer(raw, NUMPY[entry["dtype"]]).reshape(entry["shape"])
        end = at + align(entry["nbytes"])
        assert data[at + entry["nbytes"] : end] == bytes(end - at - entry["nbytes"])
    assert end == len(data)
    return arrays, header["meta"]


def expected_numpy(t: torch.Tensor, name: str) -> np.ndarray:
    if name in BITS:
        return t.view(BITS[name]).numpy().astype(NUMPY[name])
    return t.numpy().astype(NUMPY[name])


@pytest.mark.parametrize("name", sorted(wire.DTYPES))
def test_an_independent_reader_of_the_layout_agrees_with_encode(name):
    # Prepare
    dtype = wire.DTYPES[name]
    arrays = {str(s): random_tensor(dtype, s, 100 + i) for i, s in enumerate(SHAPES)}
    meta = {"config": {"lr": 0.01}, "round": 3}
    # Execute
    data = encode(Message(arrays, meta))
    got, got_meta = independent_decode(data)
    # Assert
    assert got_meta == meta and list(got) == list(arrays)
    for k, t in arrays.items():
        want = expected_numpy(t, name)
        assert got[k].shape == want.shape and got[k].dtype == want.dtype
        assert got[k].tobytes() == want.tobytes(), k


def test_length_is_the_aligned_header_plus_the_aligned_arrays():
    arrays = {
        "a": torch.zeros(3, dtype=torch.float16),
        "b": torch.zeros((), dtype=torch.bool),
        "c": torch.zeros(0, 4),
        "d": torch.zeros(5, dtype=torch.float64),
    }
    data = encode(Message(arrays, {"x": "y"}))
    (length,) = struct.unpack_from("<Q", data, 8)
    payload = align(6) + align(1) + align(0) + align(40)
    assert len(data) == align(16 + length) + payload == message_nbytes(arrays, {"x": "y"})


@pytest.mark.parametrize(
    "dtype",
    [
        torch.int16,
        torch.int32,
        torch.int64,
        torch.uint16,
        torch.float16,
        torch.float32,
        torch.float64,
        torch.complex64,
        torch.complex128,
    ],
)
def test_byteswap_matches_numpy_for_big_endian_hosts(dtype):
    t = random_tensor(dtype, (5,), 7)
    swapped = wire.byteswap(t.view(torch.uint8).reshape(-1), dtype)
    assert swapped.numpy().tobytes() == t.numpy().byteswap().tobytes()


# -- what cannot be sent -------------------------------------------------------------------


@pytest.mark.parametrize(
    ("meta", "says"),
    [
        ({"betas": (0.5, 0.9)}, "tuple"),
        ({"loss": float("nan")}, "finite"),
        ({"loss": float("-inf")}, "finite"),
        ({"m": {1: "a"}}, "keys must be strings"),
        ({"s": {1, 2}}, "set"),
        ({"t": torch.zeros(1)}, "Tensor"),
        ({"b": b"raw"}, "bytes"),
        ({"huge": 10**5000}, "JSON"),
    ],
)
def test_meta_that_would_not_decode_to_itself_is_refused(meta, says):
    with pytest.raises(WireError, match=says):
        encode(Message({}, meta))
    with pytest.raises(WireError, match=says):
        message_nbytes({}, meta)


@pytest.mark.parametrize(
    ("array", "says"),
    [
        ([1.0, 2.0], "not a tensor"),
        (torch.zeros(2, 2).to_sparse(), "not a dense tensor"),
        (torch.zeros(2, dtype=torch.float8_e4m3fnuz), "no wire name"),
        (torch.zeros([1] * 65), "dimensions"),
    ],
)
def test_arrays_that_have_no_wire_form_are_refused(array, says):
    with pytest.raises(WireError, match=says):
        encode(Message({"x": array}))


def test_wire_error_is_a_fedgen_error():
    assert issubclass(WireError, FedgenError)


# -- hostile bytes ----------------------------------------------------------------------

GOOD = encode(Message({"w": torch.arange(4.0), "flag": torch.tensor([True, False])}, {"r": 1}))
ENTRY = {"dtype": "float32", "name": "w", "nbytes": 8, "offset": 0, "shape": [2]}


def header(arrays: list[dict], meta: dict | None = None) -> str:
    return canonical({"arrays": arrays, "meta": meta or {}})


@pytest.mark.parametrize(
    ("data", "says"),
    [
        (b"", "preamble"),
        (GOOD[:10], "preamble"),
        (GOOD[:40], "truncated"),
        (GOOD[:-1], "truncated"),
        (GOOD[:-8], "truncated"),
        (GOOD + bytes(8), "past the last array"),
        (b"XXWIRE" + GOOD[6:], "magic"),
        (GOOD[:6] + struct.pack("<H", 2) + GOOD[8:], "version 2"),
        (GOOD[:8] + struct.pack("<Q", 2**63) + GOOD[16:], "truncated"),
        (frame(b'{"arrays":[],"meta":{"x":NaN}}'), "not ASCII JSON"),
        (frame(b'{"arrays":[],"meta":{"x":Infinity}}'), "not ASCII JSON"),
        (frame(b'{"arrays":[],"meta":{"x":1e999}}'), "not ASCII JSON"),
        (frame(b'{"arrays":[],"meta":{"s":"\xff\xfe"}}'), "not ASCII JSON"),
        (frame('{"arrays":[],"meta":{"s":"é"}}'), "not ASCII JSON"),
        (frame(b'{"arrays":[],"meta":{"a":1,"a":2}}'), "canonical"),
        (frame(b'{"meta":{},"arrays":[]}'), "canonical"),
        (frame(b'{"arrays": [], "meta": {}}'), "canonical"),
        (frame(b"[" * 100_000 + b"]" * 100_000), "JSON"),
        (frame(b'{"arrays":[],"meta":{"n":' + b"9" * 5000 + b"}}"), "JSON"),
        (frame(header([])[:-1] + ',"x":1}'), "exactly the keys"),
        (frame(header([{**ENTRY, "dtype": "float128"}]), bytes(8)), "unknown dtype"),
        (frame(header([{**ENTRY, "dtype": ["float32"]}]), bytes(8)), "unknown dtype"),
        (frame(header([{**ENTRY, "shape": [3]}]), bytes(8)), "the header says 8"),
        (frame(header([{**ENTRY, "shape": [2**60], "nbytes": 2**62}]), bytes(8)), "truncated"),
        (frame(header([{**ENTRY, "shape": [2**40, 2**40], "nbytes": 8}]), bytes(8)), "2\\*\\*63"),
        (frame(header([{**ENTRY, "shape": [-2, -1]}]), bytes(8)), "size >= 0"),
        (frame(header([{**ENTRY, "shape": [2.0]}]), bytes(8)), "size >= 0"),
        (frame(header([{**ENTRY, "shape": [1] * 65}]), bytes(8)), "at most 64"),
        (frame(header([{**ENTRY, "nbytes": -8}]), bytes(8)), "nbytes"),
        (frame(header([{**ENTRY, "offset": 8}]), bytes(16)), "offset"),
        (frame(header([ENTRY, {**ENTRY, "name": "v", "offset": 0}]), bytes(16)), "offset"),
        (frame(header([ENTRY, {**ENTRY, "name": "v", "offset": 4}]), bytes(16)), "offset"),
        (frame(header([ENTRY, {**ENTRY, "offset": 8}]), bytes(16)), "two arrays"),
        (frame(header([{**ENTRY, "name": 3}]), bytes(8)), "name"),
        (frame(header([{**ENTRY, "extra": 1}]), bytes(8)), "exactly dtype"),
        (frame(header([ENTRY]), bytes(4)), "truncated"),
        (
            frame(header([{**ENTRY, "nbytes": 4, "shape": [1]}]), bytes(4) + b"\x01" + bytes(3)),
            "padding",
        ),
        (
            frame(
                header([{"dtype": "bool", "name": "m", "nbytes": 2, "offset": 0, "shape": [2]}]),
                b"\x01\x02" + bytes(6),
            ),
            "0 or 1",
        ),
    ],
)
def test_hostile_bytes_raise_wire_error_saying_what_is_wrong(data, says):
    with pytest.raises(WireError, match=says):
        decode(data)


def test_a_header_padding_byte_that_is_not_zero_is_refused():
    text = header([])
    assert (16 + len(text)) % 8, "choose a header whose end needs padding"
    data = bytearray(frame(text))
    data[-1] = 1
    with pytest.raises(WireError, match="padding"):
        decode(bytes(data))


def test_a_shape_of_2_to_the_60_allocates_nothing():
    # Prepare: the header claims 2**60 float32s; the input holds 8 bytes.
    data = frame(header([{**ENTRY, "shape": [2**60], "nbytes": 2**62}]), bytes(8))
    # Execute / Assert: refused from the header, before any allocation.
    with pytest.raises(WireError, match="remain"):
        decode(data)


# -- properties ---------------------------------------------------------------------------

json_values = st.recursive(
    st.none()
    | st.booleans()
    | st.integers()
    | st.floats(allow_nan=False, allow_infinity=False)
    | st.text(max_size=12),
    lambda inner: (
        st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=6), inner, max_size=4)
    ),
    max_leaves=12,
)


@st.composite
def tensors(draw: st.DrawFn) -> torch.Tensor:
    dtype = wire.DTYPES[draw(st.sampled_from(sorted(wire.DTYPES)))]
    shape = tuple(draw(st.lists(st.integers(0, 4), max_size=4)))
    n = math.prod(shape) * torch.empty((), dtype=dtype).element_size()
    raw = draw(st.binary(min_size=n, max_size=n))
    t = torch.tensor(list(raw), dtype=torch.uint8)
    if dtype == torch.bool:
        t = t % 2
    return t.view(dtype).reshape(shape)


messages = st.builds(
    Message,
    st.dictionaries(st.text(max_size=10), tensors(), max_size=5),
    st.dictionaries(st.text(max_size=8), json_values, max_size=5),
)


@PROPERTY
@given(messages)
def test_any_message_round_trips_exactly_and_its_length_is_known(message):
    data = encode(message)
    out = decode(data)
    assert_same(out.arrays, message.arrays)
    assert canonical(out.meta) == canonical(message.meta)
    assert len(data) == message_nbytes(message.arrays, message.meta)
    assert encode(out) == data  # one message, one encoding


def decoded_size(message: Message) -> int:
    return sum(t.numel() * t.element_size() for t in message.arrays.values())


@PROPERTY
@given(messages, st.data())
def test_corrupted_messages_raise_only_wire_error(message, data):
    # Prepare: a real message, then bit flips, cuts, insertions or overwrites.
    blob = bytearray(encode(message))
    for _ in range(data.draw(st.integers(1, 3))):
        at = data.draw(st.integers(0, len(blob)))
        kind = data.draw(st.sampled_from(["flip", "cut", "insert", "overwrite"]))
        if kind == "flip" and at < len(blob):
            blob[at] ^= 1 << data.draw(st.integers(0, 7))
        elif kind == "cut":
            del blob[at : at + data.draw(st.integers(1, 64))]
        elif kind == "insert":
            blob[at:at] = data.draw(st.binary(min_size=1, max_size=16))
        else:
            chunk = data.draw(st.binary(min_size=1, max_size=16))
            blob[at : at + len(chunk)] = chunk
    # Execute
    try:
        out = decode(bytes(blob))
    except WireError:
        return
    # Assert: what does decode is a message no bigger than its bytes, and re-encodes to them.
    assert decoded_size(out) <= len(blob)
    assert encode(out) == bytes(blob)


@PROPERTY
@given(
    st.one_of(
        st.binary(max_size=200),
        st.binary(max_size=200).map(lambda b: b"FGWIRE\x01\x00" + b),
        st.builds(
            frame,
            st.builds(
                canonical,
                st.fixed_dictionaries(
                    {
                        "arrays": st.lists(
                            st.fixed_dictionaries(
                                {
                                    "dtype": st.sampled_from([*wire.DTYPES, "x"]),
                                    "name": st.text(max_size=3),
                                    "nbytes": st.integers(-4, 2**64),
                                    "offset": st.integers(-4, 64),
                                    "shape": st.lists(st.integers(-2, 2**64), max_size=3),
                                }
                            ),
                            max_size=3,
                        ),
                        "meta": st.dictionaries(st.text(max_size=4), json_values, max_size=3),
                    }
                ),
            ),
            st.binary(max_size=64),
        ),
    )
)
def test_random_bytes_and_lying_headers_raise_only_wire_error(blob):
    try:
        out = decode(blob)
    except WireError:
        return
    assert decoded_size(out) <= len(blob)


# -- the client round's messages (fedgen.engine.backends.local_training) -------------------


def test_a_reply_carries_every_field_of_a_result():
    # Prepare
    result = ClientResult(
        client_id=3,
        num_examples=120,
        update={"g.w": torch.randn(2, 3), "__clip__.unclipped": torch.tensor([0.5])},
        metrics={"loss": 0.25, "steps": 2},
        extras={"activations": torch.randn(4)},
        private_keys=frozenset({"g.w"}),
        signature="ab" * 32,
        bytes_up=999,
    )
    # Execute
    data = encode(reply_message(result))
    back = result_from_reply(decode(data))
    # Assert: all but the byte counts, which the receiver measures.
    assert (back.client_id, back.num_examples, back.metrics) == (3, 120, {"loss": 0.25, "steps": 2})
    assert type(back.metrics["steps"]) is int
    assert back.signature == result.signature and back.private_keys == result.private_keys
    assert back.update is not None and result.update is not None
    assert_same(back.update, result.update)
    assert_same(back.extras, result.extras)
    assert back.failure is None and back.bytes_up == 0


def test_a_failure_reply_has_no_update():
    back = result_from_reply(decode(encode(reply_message(ClientResult(1, 0, failure="crashed")))))
    assert back.update is None and back.failure == "crashed" and not back.ok


@pytest.mark.parametrize(
    ("arrays", "meta_change", "says"),
    [
        ({"weights/w": torch.zeros(1)}, {}, "neither update/ nor extras/"),
        ({}, {"has_update": "yes"}, "true or false"),
        ({"update/w": torch.zeros(1)}, {"has_update": False}, "carries update arrays"),
        ({}, {"private_keys": "w"}, "list of names"),
        ({}, {"extra": 1}, "fields"),
    ],
)
def test_a_malformed_reply_is_a_wire_error(arrays, meta_change, says):
    meta = reply_message(ClientResult(1, 5, update={})).meta | meta_change
    with pytest.raises(WireError, match=says):
        result_from_reply(Message(arrays, meta))


def test_a_job_gives_the_client_the_work_the_server_planned():
    # Prepare: an adaptive clip whose bound moved on the server since the client got it.
    server_clip, client_clip = (
        NormClip(1.0, target_quantile=0.5),
        NormClip(1.0, target_quantile=0.5),
    )
    server_clip.max_norm = 0.37
    work = LocalWork(
        task=None,  # type: ignore[arg-type]
        global_state={"w": torch.randn(3, 2), "steps": torch.tensor(4)},
        transforms=[server_clip],
        local_steps=None,
        local_epochs=1.5,
        round=7,
        noise_key=bytes(range(32)),
    )
    ins = ClientInstruction(2, 2**63 + 5, {"lr": 0.01, "mu": [1, 2]})
    # Execute
    message = decode(encode(job_message(ins, work, num_clients=9)))
    got_ins, got, n = work_from_job(message, None, [client_clip], None, None)  # type: ignore[arg-type]
    # Assert
    assert got_ins == ins and n == 9
    assert (got.round, got.local_steps, got.local_epochs) == (7, None, 1.5)
    # The run's noise key stays with the server; the client gets its own, derived one.
    assert got.noise_key is None and got.client_key == client_noise_key(work.noise_key, 2)
    assert got.client_key != work.noise_key and work.noise_key.hex() not in str(message.meta)
    assert got.own_noise_key(2) == work.own_noise_key(2)
    assert_same(got.global_state, work.global_state)
    assert client_clip.max_norm == 0.37


def test_a_job_with_another_pipeline_is_refused():
    work = LocalWork(None, {}, [NormClip(1.0)], 2, None)  # type: ignore[arg-type]
    message = job_message(ClientInstruction(0, 1), work, 1)
    with pytest.raises(WireError, match="1 transform states, the client has 0"):
        work_from_job(message, None, [], None, None)  # type: ignore[arg-type]


@pytest.mark.parametrize("recipe_secure", [True, False])
def test_a_job_whose_secure_flag_disagrees_with_the_clients_recipe_is_refused(recipe_secure):
    # Prepare: the client's recipe masks its updates (or not); the job says the opposite.
    # A server that cleared the flag would otherwise get every update in the clear.
    def pipeline():
        return [NormClip(1.0), *([SecureAggregation()] if recipe_secure else [])]

    work = LocalWork(None, {}, pipeline(), 2, None, secure=not recipe_secure)  # type: ignore[arg-type]
    message = decode(encode(job_message(ClientInstruction(0, 1), work, 3)))
    # Execute / Assert
    with pytest.raises(WireError, match=f"secure={not recipe_secure}.*refused"):
        work_from_job(message, None, pipeline(), None, None)  # type: ignore[arg-type]
    # The same job with the recipe's own flag is read as before.
    work = LocalWork(None, {}, pipeline(), 2, None, secure=recipe_secure)  # type: ignore[arg-type]
    message = decode(encode(job_message(ClientInstruction(0, 1), work, 3)))
    assert work_from_job(message, None, pipeline(), None, None)[1].secure is recipe_secure  # type: ignore[arg-type]


# -- the backends send these messages and count their bytes --------------------------------


def test_process_pool_and_in_process_train_and_count_the_same_messages(mnist_dir):
    """Private tensors, an adaptive clip bound that moves every round and a DP-SGD noise
    key all cross to the workers as messages: two rounds end bit-identical to the
    in-process backend, which skips encoding but reports the same byte counts."""
    from tiny_federation import tiny_config

    from fedgen.experiment import build_experiment

    # Prepare: the discriminator stays private; the clip bound is small enough to bite.
    overrides = {
        "task.params": "{batch_size: 32, generator_width: 8, discriminator_width: 8, "
        "federate: [generator], fake_labels: uniform}",
        "strategy.params": "{min_clients: 2, weighted: false, fixed_denominator: true}",
        "transforms": "[{name: clip, params: {max_norm: 0.01, target_quantile: 0.5}}]",
        "dpsgd": "{noise_multiplier: 0.5, max_grad_norm: 1.0, delta: 1.0e-4}",
        "federation.rounds": 2,
    }
    backends = {"inprocess": "{}", "process_pool": "{workers: 2}"}
    feds = {
        name: build_experiment(
            tiny_config(
                mnist_dir,
                threads=1,
                **overrides,
                **{"backend.name": name, "backend.params": params},
            )
        ).federation
        for name, params in backends.items()
    }
    records = {}
    # Execute
    for backend, fed in feds.items():
        fed.noise_key = feds["inprocess"].noise_key  # one secret for both runs
        try:
            records[backend] = [fed.run_round(r).metrics for r in range(2)]
        finally:
            fed.backend.close()
    # Assert
    seq, pool = feds["inprocess"], feds["process_pool"]
    assert_same(pool.global_state, seq.global_state)
    assert sorted(pool.private_states) == sorted(seq.private_states) != []
    for c in seq.private_states:
        assert_same(pool.private_states[c], seq.private_states[c])
    for got, want in zip(records["process_pool"], records["inprocess"], strict=True):
        assert got["failures"] == 0
        assert (got["bytes_up"], got["bytes_down"]) == (want["bytes_up"], want["bytes_down"])
        assert got["normclip/clip_norm"] == want["normclip/clip_norm"]
    # The bound moved after round 0, so the workers clipped round 1 with the new one.
    assert (
        records["inprocess"][1]["normclip/clip_norm"]
        != records["inprocess"][0]["normclip/clip_norm"]
    )
