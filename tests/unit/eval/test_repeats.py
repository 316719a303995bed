"""Means over repeated measurements, and the spread of the headline figure."""

from __future__ import annotations

import pytest

from fedgen.eval.repeats import mean_over_repeats


def test_one_run_is_returned_as_is() -> None:
    assert mean_over_repeats([{"a": 0.5, "b": 2.0}], std_of="a") == {"a": 0.5, "b": 2.0}


def test_means_of_every_key_and_the_sample_std_of_one() -> None:
    runs = [{"a": 0.5, "b": 1.0}, {"a": 0.7, "b": 3.0}, {"a": 0.6, "b": 2.0}]
    out = mean_over_repeats(runs, std_of="a")
    assert out["a"] == pytest.approx(0.6)
    assert out["b"] == pytest.approx(2.0)
    assert out["a_std"] == pytest.approx(0.1)  # sample (n - 1) standard deviation
    assert "b_std" not in out


def test_runs_with_different_figures_are_refused() -> None:
    with pytest.raises(ValueError, match="repeats report different figures"):
        mean_over_repeats([{"a": 1.0}, {"b": 1.0}], std_of="a")
    with pytest.raises(ValueError, match="at least one run"):
        mean_over_repeats([], std_of="a")
