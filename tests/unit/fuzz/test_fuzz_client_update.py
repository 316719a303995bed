"""Fuzzing what a client sends the server: updates (``check_update``) and whole results
(``check_result``).

Anything is either rejected with ``ClientUpdateError`` or accepted, and an accepted
update really fits the model: same keys, shapes and dtypes, finite, within the norm bound.
"""

from __future__ import annotations

import math
from typing import Any

import pytest
import torch
from hypothesis import example, given
from hypothesis import strategies as st
from strategies import finite_like, fuzz, nested, only_raises, scalars, tensors

from fedgen.engine.validation import check_result, check_update
from fedgen.errors import ClientUpdateError
from fedgen.types import ClientResult

B = "client_update"
REFERENCE = {
    "gen.weight": torch.zeros(3, 2),
    "gen.bias": torch.zeros(3),
    "disc.scale": torch.zeros(()),
    "steps": torch.zeros(2, dtype=torch.int64),
}
AUX = "__clip__.unclipped"
MAX_NORM = 50.0


def assert_fits(
    update: Any, norm: float, max_norm: float | None, auxiliary: frozenset[str]
) -> None:
    """What acceptance promises the aggregation."""
    assert isinstance(update, dict) and set(update) == set(REFERENCE) | auxiliary
    total = 0.0
    for key, ref in REFERENCE.items():
        value = update[key]
        assert isinstance(value, torch.Tensor) and value.layout == torch.strided
        assert value.shape == ref.shape and value.dtype == ref.dtype
        assert bool(torch.isfinite(value).all())
        total += float(value.double().pow(2).sum())
    for key in auxiliary:
        value = update[key]
        assert value.shape == (1,) and value.is_floating_point() and float(value.abs()) <= 1
    assert math.isfinite(norm) and math.isclose(norm, total**0.5, rel_tol=1e-9, abs_tol=1e-12)
    if max_norm is not None:
        assert norm <= max_norm


def values_for(key: str) -> st.SearchStrategy[Any]:
    """A right tensor, a wrong one (shape, dtype, values), or not a tensor at all."""
    ref = REFERENCE[key] if key in REFERENCE else torch.zeros(1)
    return st.one_of(
        tensors(tuple(ref.shape), ref.dtype),
        tensors(tuple(ref.shape)),
        tensors(),
        scalars,
        nested(max_leaves=4),
        st.just(torch.zeros(ref.shape, dtype=ref.dtype, device="meta")),
        st.just(torch.zeros(ref.shape, dtype=ref.dtype).to_sparse()),
        st.just(torch.zeros(ref.shape, dtype=ref.dtype, requires_grad=ref.is_floating_point())),
    )


@st.composite
def hostile_updates(draw: st.DrawFn) -> Any:
    """A mapping over the model's keys, an auxiliary key and strays, with any values."""
    keys = draw(
        st.sets(
            st.one_of(
                st.sampled_from([*REFERENCE, AUX]), st.text(max_size=4), st.integers(), st.none()
            ),
            max_size=7,
        )
    )
    if draw(st.booleans()):
        keys |= set(REFERENCE)
    out: dict[Any, Any] = {}
    for key in keys:
        out[key] = draw(values_for(key) if isinstance(key, str) else st.just(torch.zeros(1)))
    return out


@given(
    update=st.one_of(hostile_updates(), finite_like(REFERENCE, scale=30.0), nested(), scalars),
    max_norm=st.sampled_from([None, MAX_NORM, 1e-3]),
    auxiliary=st.sampled_from([frozenset(), frozenset({AUX})]),
)
@example(update={1: torch.zeros(1), "a": torch.zeros(1)}, max_norm=None, auxiliary=frozenset())
@example(update=[("gen.bias", torch.zeros(3))], max_norm=None, auxiliary=frozenset())
@example(
    update={**{k: torch.zeros_like(v) for k, v in REFERENCE.items()}, AUX: torch.tensor([1e30])},
    max_norm=None,
    auxiliary=frozenset({AUX}),
)
@example(
    update={
        **{k: torch.zeros_like(v) for k, v in REFERENCE.items()},
        "steps": torch.tensor([2**62, 2**62]),
    },
    max_norm=MAX_NORM,
    auxiliary=frozenset(),
)
@fuzz(B, max_examples=300)
def test_any_update_is_rejected_or_fits_the_model(
    update: Any, max_norm: float | None, auxiliary: frozenset[str]
) -> None:
    with only_raises(B, ClientUpdateError) as err:
        norm = check_update(update, REFERENCE, max_norm, auxiliary)
    if not err:
        assert_fits(update, norm, max_norm, auxiliary)


# -- whole results ---------------------------------------------------------------------

MAX_EXAMPLES = 600


@st.composite
def hostile_results(draw: st.DrawFn) -> Any:
    good = {k: torch.zeros_like(v) for k, v in REFERENCE.items()}
    return ClientResult(
        client_id=draw(st.one_of(st.just(4), st.integers(-3, 9), scalars)),
        num_examples=draw(
            st.one_of(st.integers(1, MAX_EXAMPLES), st.integers(-(2**70), 2**70), scalars)
        ),
        update=draw(st.one_of(st.just(good), hostile_updates(), st.none(), scalars)),
        metrics=draw(
            st.one_of(
                st.dictionaries(
                    st.sampled_from(["loss", "g_loss"]), st.floats(-10, 10), max_size=2
                ),
                st.dictionaries(st.one_of(st.text(max_size=70), scalars), scalars, max_size=3),
                nested(),
            )
        ),
        failure=draw(st.one_of(st.none(), st.none(), st.text(max_size=5), scalars)),
        bytes_up=draw(st.one_of(st.integers(0, 10**6), st.integers(-5, 5), scalars)),
        bytes_down=draw(st.one_of(st.integers(0, 10**6), st.integers(-5, 5), scalars)),
        signature=draw(st.one_of(st.none(), st.text("0123456789abcdef", max_size=130), scalars)),
        extras=draw(
            st.one_of(
                st.just({}),
                st.dictionaries(st.text(max_size=4), st.one_of(tensors(), scalars), max_size=2),
                scalars,
            )
        ),
        private_keys=draw(
            st.one_of(
                st.just(frozenset()),
                st.frozensets(st.sampled_from([*REFERENCE, "nope"]), max_size=2),
                scalars,
            )
        ),
    )


@given(result=st.one_of(hostile_results(), scalars))
@example(
    result=ClientResult(
        4, num_examples=0, update={k: torch.zeros_like(v) for k, v in REFERENCE.items()}
    )
)
@example(
    result=ClientResult(
        4, num_examples=True, update={k: torch.zeros_like(v) for k, v in REFERENCE.items()}
    )
)
@example(
    result=ClientResult(
        4,
        10,
        update={k: torch.zeros_like(v) for k, v in REFERENCE.items()},
        metrics={"loss": math.nan},
    )
)
@fuzz(B, max_examples=300)
def test_any_result_is_rejected_or_safe_to_aggregate(result: Any) -> None:
    with only_raises(B, ClientUpdateError) as err:
        norm = check_result(
            result,
            REFERENCE,
            MAX_NORM,
            frozenset(),
            max_examples=MAX_EXAMPLES,
            client_id=4,
        )
    if err:
        return
    assert isinstance(result, ClientResult) and result.failure is None
    assert result.client_id == 4
    n = result.num_examples
    assert isinstance(n, int) and not isinstance(n, bool) and 1 <= n <= MAX_EXAMPLES
    for count in (result.bytes_up, result.bytes_down):
        assert type(count) is int and count >= 0
    assert result.signature is None or (
        isinstance(result.signature, str) and set(result.signature) <= set("0123456789abcdef")
    )
    assert all(
        isinstance(k, str) and type(v) in (int, float) and math.isfinite(v)
        for k, v in result.metrics.items()
    )
    assert all(isinstance(k, str) and isinstance(v, torch.Tensor) for k, v in result.extras.items())
    assert isinstance(result.private_keys, frozenset) and result.private_keys <= set(REFERENCE)
    assert_fits(result.update, norm, MAX_NORM, frozenset())


def test_a_metric_beyond_a_floats_range_is_a_client_error_not_a_crash():
    # A JSON integer may have thousands of digits; math.isfinite overflows on it.
    with pytest.raises(ClientUpdateError, match="finite number"):
        check_result(
            ClientResult(4, 10, update=dict(REFERENCE), metrics={"loss": 10**400}),
            REFERENCE,
            50.0,
            client_id=4,
        )
