"""Figures of a measurement repeated on fresh draws: their means, and the spread of one.

A TSTR figure comes from one synthetic draw (and, for images, one classifier seed), and
both move it. ``eval.tstr_repeats`` repeats the measurement and reports the mean, with
the sample standard deviation of the headline figure so a reader can tell a gap from the
measurement's noise.
"""

from __future__ import annotations

import math
import statistics


def mean_over_repeats(runs: list[dict[str, float]], std_of: str) -> dict[str, float]:
    """Every key's mean over ``runs``; with two or more, also ``{std_of}_std``.

    Raises:
        ValueError: no runs, or runs that do not report the same keys.
    """
    if not runs:
        raise ValueError("mean_over_repeats needs at least one run")
    keys = list(runs[0])
    if any(list(r) != keys for r in runs[1:]):
        raise ValueError(f"repeats report different figures: {[sorted(r) for r in runs]}")
    if len(runs) == 1:
        return dict(runs[0])
    out = {k: math.fsum(r[k] for r in runs) / len(runs) for k in keys}
    out[f"{std_of}_std"] = statistics.stdev(r[std_of] for r in runs)
    return out
