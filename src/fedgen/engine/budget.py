"""A wall-time budget for a run: the round that crosses it is the last one."""

from __future__ import annotations

import time

from fedgen.engine.federation import Callback, Federation, RoundRecord


class WallBudget(Callback):
    """Ends the run after the round during which ``seconds`` of wall time were spent.

    Put it first among the callbacks: it lowers ``fed.rounds`` to the rounds done,
    so the callbacks after it (a final evaluation, the last checkpoint) see that round
    as the final one. Benchmarks compare methods at equal wall time with it; the rounds
    a run gets then depend on the machine, so a recipe should name its rounds.
    """

    def __init__(self, seconds: float) -> None:
        if seconds <= 0:
            raise ValueError(f"a wall-time budget must be positive, got {seconds} s")
        self.seconds = seconds
        self.t0 = 0.0

    def on_run_start(self, fed: Federation) -> None:
        self.t0 = time.perf_counter()

    def on_round_end(self, fed: Federation, record: RoundRecord) -> None:
        if time.perf_counter() - self.t0 >= self.seconds:
            fed.rounds = fed.next_round
