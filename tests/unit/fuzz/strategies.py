"""Hypothesis strategies and bookkeeping shared by the fuzz tests of fedgen's input boundaries.

Each boundary (config, checkpoint, client_update, secagg) is fuzzed by one test
module ``test_fuzz_<boundary>.py``. ``fuzz`` counts the examples each boundary
tries and ``only_raises`` records every exception that escapes it other than the
allowed ``FedgenError`` subclasses; ``conftest.py`` prints both after the run.
"""

from __future__ import annotations

import functools
import math
from collections import Counter
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Any, TypeVar

import torch
from hypothesis import settings
from hypothesis import strategies as st

#: Examples run per boundary (shrinking and replays included).
TRIED: Counter[str] = Counter()
#: ``(boundary, exception type)`` -> how many examples let that exception escape.
ESCAPED: Counter[tuple[str, str]] = Counter()

F = TypeVar("F", bound=Callable[..., Any])


def fuzz(boundary: str, max_examples: int = 200, **kwargs: Any) -> Callable[[F], F]:
    """``settings`` for one property test of ``boundary``, counting each example it runs.

    Put it below ``@given`` so that every generated example passes through the counter.
    """

    def decorate(fn: F) -> F:
        @functools.wraps(fn)
        def counted(*args: Any, **kw: Any) -> Any:
            TRIED[boundary] += 1
            return fn(*args, **kw)

        return settings(max_examples=max_examples, deadline=None, **kwargs)(counted)  # type: ignore[return-value]

    return decorate


@contextmanager
def only_raises(boundary: str, *allowed: type[BaseException]) -> Iterator[list[BaseException]]:
    """Run the block; swallow and hand back an ``allowed`` error, record and re-raise any other.

    Yields a list that holds the allowed exception after the block, if one was raised.
    An allowed error must carry a message (fedgen's errors say what to do).
    """
    caught: list[BaseException] = []
    try:
        yield caught
    except allowed as exc:
        assert str(exc).strip(), f"{type(exc).__name__} raised without a message"
        caught.append(exc)
    except BaseException as exc:
        # Hypothesis stops an example by raising through the test (StopTest): not an escape.
        if not type(exc).__module__.startswith("hypothesis"):
            ESCAPED[(boundary, type(exc).__name__)] += 1
        raise


# -- plain values ----------------------------------------------------------------------

#: Scalars YAML and JSON can hold, plus the floats that break naive arithmetic.
scalars = st.one_of(
    st.none(),
    st.booleans(),
    st.integers(min_value=-(2**70), max_value=2**70),
    st.floats(allow_nan=True, allow_infinity=True),
    st.text(max_size=12),
)


def nested(keys: st.SearchStrategy[Any] | None = None, max_leaves: int = 20) -> st.SearchStrategy:
    """Nested lists and dicts of ``scalars`` (dict keys from ``keys``, short text by default)."""
    keys = keys if keys is not None else st.text(max_size=8)
    return st.recursive(
        scalars,
        lambda inner: st.one_of(
            st.lists(inner, max_size=4),
            st.dictionaries(keys, inner, max_size=4),
        ),
        max_leaves=max_leaves,
    )


# -- bytes -----------------------------------------------------------------------------


@st.composite
def mutated(draw: st.DrawFn, data: bytes) -> bytes:
    """``data`` truncated, extended, bit-flipped, spliced or replaced (never unchanged)."""
    kind = draw(st.sampled_from(["truncate", "extend", "flip", "splice", "random"]))
    if kind == "truncate" and data:
        return data[: draw(st.integers(0, len(data) - 1))]
    if kind == "extend":
        return data + draw(st.binary(min_size=1, max_size=64))
    if kind == "flip" and data:
        out = bytearray(data)
        for _ in range(draw(st.integers(1, 4))):
            i = draw(st.integers(0, len(out) - 1))
            out[i] ^= 1 << draw(st.integers(0, 7))
        return bytes(out) if bytes(out) != data else data + b"\0"
    if kind == "splice" and data:
        start = draw(st.integers(0, len(data) - 1))
        stop = draw(st.integers(start, len(data)))
        patch = draw(st.binary(max_size=16))
        out = data[:start] + patch + data[stop:]
        return out if out != data else data + b"\0"
    out = draw(st.binary(max_size=2 * len(data) + 8))
    return out if out != data else data + b"\0"


# -- tensors ---------------------------------------------------------------------------

DTYPES = [
    torch.float32,
    torch.float64,
    torch.float16,
    torch.bfloat16,
    torch.int64,
    torch.int32,
    torch.uint8,
    torch.bool,
    torch.complex64,
]

#: Floats that probe every check: huge, tiny, signed zero, NaN, Inf.
special_floats = st.one_of(
    st.floats(allow_nan=True, allow_infinity=True, width=32),
    st.sampled_from([0.0, -0.0, 1e38, -1e38, 3.4e38, 1e-45, math.nan, math.inf, -math.inf]),
)


@st.composite
def tensors(
    draw: st.DrawFn,
    shape: tuple[int, ...] | None = None,
    dtype: torch.dtype | None = None,
) -> torch.Tensor:
    """A small tensor of ``shape``/``dtype`` (drawn when None) with finite and special values."""
    if shape is None:
        shape = tuple(draw(st.lists(st.integers(0, 3), max_size=3)))
    if dtype is None:
        dtype = draw(st.sampled_from(DTYPES))
    numel = math.prod(shape)
    # Up to 16 drawn values, repeated over a larger tensor: model-sized shapes stay cheap.
    values = draw(st.lists(special_floats, min_size=min(numel, 1), max_size=min(numel, 16)))
    base = torch.tensor(values, dtype=torch.float64).repeat(numel)[:numel].reshape(shape)
    if dtype.is_floating_point or dtype.is_complex:
        return base.to(dtype)
    # Integer casts of NaN/Inf are undefined: clamp first, as a hostile client could.
    return torch.nan_to_num(base, nan=0.0, posinf=1e6, neginf=-1e6).clamp(-1e6, 1e6).to(dtype)


def finite_like(
    reference: dict[str, torch.Tensor], scale: float = 1.0
) -> st.SearchStrategy[dict[str, torch.Tensor]]:
    """Updates of exactly ``reference``'s keys, shapes and dtypes with finite values."""
    return st.fixed_dictionaries(
        {
            k: st.lists(
                st.floats(-scale, scale, allow_nan=False, width=32),
                min_size=v.numel(),
                max_size=v.numel(),
            ).map(
                lambda xs, v=v: torch.tensor(xs, dtype=torch.float64).reshape(v.shape).to(v.dtype)
            )
            for k, v in reference.items()
        }
    )


# -- config ----------------------------------------------------------------------------


def config_keys() -> list[str]:
    """Every dotted key of ``ExperimentConfig`` (sections and leaves), read from the model."""
    from pydantic import BaseModel

    from fedgen.config import ExperimentConfig

    out: list[str] = []

    def walk(model: type[BaseModel], prefix: str) -> None:
        for name, field in model.model_fields.items():
            key = prefix + name
            out.append(key)
            for t in (field.annotation, *getattr(field.annotation, "__args__", ())):
                if isinstance(t, type) and issubclass(t, BaseModel):
                    walk(t, key + ".")

    walk(ExperimentConfig, "")
    return out


_YAML_TOKENS = [
    ": ",
    " ",
    "\n",
    "  ",
    "- ",
    "[",
    "]",
    "{",
    "}",
    ", ",
    "&a ",
    "*a",
    "<<: *a",
    "? ",
    "!!python/object/apply:os.system ['true'] ",
    "!!binary ",
    "!!float ",
    "!!int ",
    "!!timestamp ",
    "!!set ",
    "!!omap ",
    "!!str ",
    "!foo ",
    "'",
    '"',
    "# c",
    "|\n",
    ">\n",
    "%YAML 1.1\n",
    "%TAG ! x\n",
    "---\n",
    "...\n",
    "1e-1",
    "1E5",
    ".inf",
    "-.inf",
    ".nan",
    "~",
    "null",
    "yes",
    "no",
    "0x1F",
    "0o17",
    "0b101",
    "1_000",
    "1:30",
    "2020-01-01",
    "2020-13-45",
    "9" * 40,
    "\t",
    "\x00",
    "\ufeff",
    "\u2028",
    "é",
    "🙂",
    "\\",
    "%",
    "@",
    "`",
]


@st.composite
def yaml_like(draw: st.DrawFn) -> str:
    """Text built from config keys and YAML syntax: mostly near-YAML, often malformed."""
    keys = config_keys()
    leaf_keys = [k.rsplit(".", 1)[-1] for k in keys]
    token = st.one_of(
        st.sampled_from(_YAML_TOKENS),
        st.sampled_from(leaf_keys),
        st.sampled_from(keys),
        st.text(max_size=6),
    )
    return "".join(draw(st.lists(token, max_size=30)))


def mutated_config() -> st.SearchStrategy[Any]:
    """The default config as a dict with a few keys set to arbitrary values, added or removed."""
    from fedgen.config import ExperimentConfig

    keys = config_keys()

    @st.composite
    def build(draw: st.DrawFn) -> Any:
        raw = ExperimentConfig().model_dump(mode="json")
        for _ in range(draw(st.integers(1, 4))):
            path = draw(
                st.one_of(st.sampled_from(keys), st.sampled_from(keys).map(lambda k: k + ".x"))
            )
            *parents, leaf = path.split(".")
            node = raw
            for part in parents:
                child = node.get(part) if isinstance(node, dict) else None
                if not isinstance(child, dict):
                    break
                node = child
            else:
                if draw(st.booleans()) and leaf in node:
                    del node[leaf]
                else:
                    node[leaf] = draw(nested())
        return raw

    return build()
