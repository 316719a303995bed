"""The plain progress line (``--no-progress``): what a round says about its cohort."""

from __future__ import annotations

from types import SimpleNamespace

import pytest

from fedgen.engine.callbacks import ProgressCallback
from fedgen.engine.federation import RoundRecord


def _line(metrics: dict[str, object], capsys: pytest.CaptureFixture[str]) -> str:
    fed = SimpleNamespace(rounds=3, next_round=1, stop_reason=None)
    ProgressCallback("run", enabled=False).on_round_end(fed, RoundRecord(0, metrics))  # type: ignore[arg-type]
    return capsys.readouterr().err.strip()


def test_line_counts_the_cohort_and_its_failures(capsys: pytest.CaptureFixture[str]) -> None:
    line = _line({"clients": 7, "failures": 2, "loss/elbo": 1.5}, capsys)
    assert line == "round 1/3 clients 7 (2 failed) | elbo 1.500"


def test_withheld_cohort_is_not_reported_as_zero(capsys: pytest.CaptureFixture[str]) -> None:
    # Client-level DP removes the cohort's size from the round's metrics: the line must
    # not claim that no client trained.
    line = _line({"epsilon": 2.5}, capsys)
    assert line == "round 1/3 clients withheld | ε 2.5"
