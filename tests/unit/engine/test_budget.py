"""TimeBudget ends a run at the round that crosses it, on either clock."""

import time
from types import SimpleNamespace

import pytest

from fedgen.engine.budget import TimeBudget
from fedgen.engine.federation import RoundRecord


@pytest.mark.parametrize("cpu", [False, True])
def test_the_round_that_crosses_the_budget_is_the_last(cpu):
    fed = SimpleNamespace(rounds=100, next_round=0)
    budget = TimeBudget(0.05, cpu=cpu)
    budget.on_run_start(fed)
    fed.next_round = 1
    budget.on_round_end(fed, RoundRecord(0))
    assert fed.rounds == 100  # still within budget
    # Busy until both clocks advanced past the budget (on a loaded machine CPU time
    # lags wall time, so waiting on one clock alone would not do).
    wall, cpu_time = time.perf_counter(), time.process_time()
    while time.perf_counter() - wall < 0.1 or time.process_time() - cpu_time < 0.1:
        pass
    fed.next_round = 2
    budget.on_round_end(fed, RoundRecord(1))
    assert fed.rounds == 2 and budget.spent >= 0.05


def test_a_budget_must_be_positive():
    with pytest.raises(ValueError, match="positive"):
        TimeBudget(0)
