"""Which curves are worth a chart: at least two finite points that do not all agree.

A chart of a constant (steps per round, the real-data accuracy of the feature
classifier) or of a single point (a figure measured only after the last round)
shows nothing a number could not; the report states those as numbers instead.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

#: Relative spread below which a series counts as constant (float residue of equal means).
CONSTANT_TOLERANCE = 1e-9
#: For counts drawn from zero (bytes, clients, examples), a spread under 0.1% of the
#: value is a flat line on the chart: e.g. bytes that differ by an encoded length field.
FLAT_ON_A_ZERO_AXIS = 1e-3


def finite_values(points: Sequence[tuple[float, float]]) -> list[float]:
    """The y values of ``points`` whose coordinates are both finite."""
    return [y for x, y in points if math.isfinite(x) and math.isfinite(y)]


def worth_drawing(
    points: Sequence[tuple[float, float]], tolerance: float = CONSTANT_TOLERANCE
) -> bool:
    """True when ``points`` hold two or more finite points whose values differ by more
    than ``tolerance`` times the largest magnitude."""
    values = finite_values(points)
    if len(values) < 2:
        return False
    low, high = min(values), max(values)
    return high - low > tolerance * max(abs(low), abs(high), 1e-300)


def why_not_drawn(
    points: Sequence[tuple[float, float]], tolerance: float = CONSTANT_TOLERANCE
) -> str:
    """A short reason a series is not drawn: ``"constant"``, ``"one point"`` or
    ``"no finite value"``; ``""`` when it is worth drawing."""
    values = finite_values(points)
    if not values:
        return "no finite value"
    if len(values) == 1:
        return "one point"
    return "" if worth_drawing(points, tolerance) else "constant"
