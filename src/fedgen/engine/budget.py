"""A time budget for a run: the round that crosses it is the last one."""

from __future__ import annotations

import time

from fedgen.engine.federation import Callback, Federation, RoundRecord


class TimeBudget(Callback):
    """Ends the run after the round during which ``seconds`` were spent.

    ``cpu=False`` counts wall time; ``cpu=True`` this process's CPU time, which other
    jobs on a shared machine do not inflate (it misses worker processes: use it with
    the in-process backends). Put it first among the callbacks: it lowers ``fed.rounds``
    to the rounds done, so the callbacks after it (a final evaluation, the last
    checkpoint) see that round as the final one. Benchmarks compare methods at equal
    time with it; the rounds a run gets then depend on the machine, so a recipe should
    name its rounds.
    """

    def __init__(self, seconds: float, *, cpu: bool = False) -> None:
        if seconds <= 0:
            raise ValueError(f"a time budget must be positive, got {seconds} s")
        self.seconds = seconds
        self.clock = time.process_time if cpu else time.perf_counter
        self.t0 = 0.0
        #: Seconds spent by the end of the last round so far.
        self.spent = 0.0

    def on_run_start(self, fed: Federation) -> None:
        self.t0 = self.clock()

    def on_round_end(self, fed: Federation, record: RoundRecord) -> None:
        self.spent = self.clock() - self.t0
        if self.spent >= self.seconds:
            fed.rounds = fed.next_round
