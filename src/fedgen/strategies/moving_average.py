"""Exponential moving averages of model states over rounds (Polyak averaging).

For GAN generators the average samples better than the last iterate (Yazici et
al. 2019, "The Unusual Effectiveness of Averaging in GAN Training"). With
``warmup`` the decay grows as ``min(decay, (1 + t) / (10 + t))`` after ``t``
updates (TensorFlow's ``ExponentialMovingAverage`` with ``num_updates``), so a
short run's average is not dominated by its first, untrained rounds. With
``warmup="debias"`` update ``t`` takes ``1 - (1 - decay) / (1 - decay ** (t + 1))``:
the average is then exactly the rounds' models weighted ``decay ** age`` and
normalised (Adam's bias correction of its moments), with no weight left on the
untrained start and no cap on the decay, so a slow decay is usable in a short run.
"""

from __future__ import annotations

from collections.abc import Collection, Sequence
from typing import Literal

from fedgen.types import StateDict

#: ``strategy.params.ema_warmup``: none, TensorFlow's schedule, or bias correction.
EmaWarmup = bool | Literal["debias"]


def effective_decay(decay: float, updates: int, warmup: EmaWarmup) -> float:
    """The decay of update number ``updates`` (0-based)."""
    if warmup == "debias":
        return 1.0 - (1.0 - decay) / (1.0 - decay ** (updates + 1)) if decay > 0 else 0.0
    return min(decay, (1 + updates) / (10 + updates)) if warmup else decay


def ema_update(
    average: StateDict | None, before: StateDict, after: StateDict, decay: float
) -> StateDict:
    """``decay * average + (1 - decay) * after`` for float tensors; the average starts at
    ``before`` (the state the first averaged round began from); other tensors take ``after``."""
    start = before if average is None else average
    return {
        k: decay * start[k] + (1 - decay) * v if v.is_floating_point() else v.clone()
        for k, v in after.items()
    }


def replay_averages(
    start: StateDict,
    states: Sequence[StateDict],
    decay: float,
    warmup: EmaWarmup,
    keep: Collection[int],
    applied: Sequence[bool] | None = None,
) -> dict[int, StateDict]:
    """The server's moving average after each round index in ``keep`` (0-based), replayed
    from the global state after every round (``states``; ``start``: before round 0) as
    the FedAvg family updates it, for any decay after the fact ("post-hoc EMA").

    A round not ``applied`` (it failed: the state did not move) updates nothing and does
    not count toward the warm-up, as in the strategy. Before the first applied round the
    average is the state itself, which is what evaluation uses without one.
    """
    out: dict[int, StateDict] = {}
    average: StateDict | None = None
    updates = 0
    before = start
    for i, after in enumerate(states):
        if applied is None or applied[i]:
            d = effective_decay(decay, updates, warmup)
            average = ema_update(average, before, after, d)
            updates += 1
        if i in keep:
            out[i] = average if average is not None else after
        before = after
    return out
