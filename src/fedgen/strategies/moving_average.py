"""Exponential moving averages of model states over rounds (Polyak averaging).

For GAN generators the average samples better than the last iterate (Yazici et
al. 2019, "The Unusual Effectiveness of Averaging in GAN Training"). With
``warmup`` the decay grows as ``min(decay, (1 + t) / (10 + t))`` after ``t``
updates (TensorFlow's ``ExponentialMovingAverage`` with ``num_updates``), so a
short run's average is not dominated by its first, untrained rounds.
"""

from __future__ import annotations

from fedgen.types import StateDict


def effective_decay(decay: float, updates: int, warmup: bool) -> float:
    """The decay of update number ``updates`` (0-based)."""
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
