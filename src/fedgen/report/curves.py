"""The report's curves: per-round figures worth a chart, and the rest stated as numbers.

Losses share one chart; each quality figure has its own; the loop's bookkeeping
(data sent, seconds, clients, examples) follows. A series that is constant or has a
single point is not drawn (``fedgen.report.worth_drawing``); a line under the charts
gives its value instead, so nothing the run recorded disappears.
"""

from __future__ import annotations

import html
import math
from typing import Any, TypeGuard

from fedgen.report.figures_table import shown
from fedgen.report.svg import format_number, line_chart
from fedgen.report.worth_drawing import (
    CONSTANT_TOLERANCE,
    FLAT_ON_A_ZERO_AXIS,
    why_not_drawn,
    worth_drawing,
)

#: Bookkeeping charts: title, then (metrics key, legend name, divisor) per series.
SYSTEM_CHARTS: tuple[tuple[str, tuple[tuple[str, str, float], ...]], ...] = (
    ("MB sent per round", (("bytes_up", "up", 1e6), ("bytes_down", "down", 1e6))),
    ("seconds per round", (("seconds", "round", 1.0), ("eval_seconds", "evaluation", 1.0))),
    ("clients per round", (("clients", "clients", 1.0), ("failures", "failures", 1.0))),
    ("examples per round", (("examples", "examples", 1.0),)),
)
SYSTEM_KEYS = {"round"} | {key for _, series in SYSTEM_CHARTS for key, _, _ in series}
LOSS_PREFIX = "loss/"
#: Spreads of an estimate over its subsets: in the full table, not worth a chart each.
NOT_CHARTED_SUFFIXES = ("_std",)

Points = list[tuple[float, float]]


def per_round_series(
    metrics: list[dict[str, Any]],
) -> tuple[dict[str, Points], set[str], list[tuple[Any, Any]]]:
    """Numeric series by key (x = round), keys that hold no number, and failed clients."""
    curves: dict[str, dict[float, float]] = {}
    not_numbers: set[str] = set()
    failed: list[tuple[Any, Any]] = []
    for index, row in enumerate(metrics):
        round_value = row.get("round")
        x = float(round_value) if _is_number(round_value) else float(index + 1)
        for key, value in row.items():
            if key == "round":
                continue
            if _is_number(value):
                curves.setdefault(key, {})[x] = float(value)  # a re-run round replaces
            elif key == "failed_clients":
                if value:
                    failed.append((row.get("round", index + 1), value))
            else:
                not_numbers.add(key)
    return {k: sorted(v.items()) for k, v in curves.items()}, not_numbers, failed


def curves_section(metrics: list[dict[str, Any]]) -> str:
    """The "Curves" section of the report; ``""`` when no round was recorded."""
    if not metrics:
        return ""
    curves, not_numbers, failed = per_round_series(metrics)
    charts: list[str] = []
    skipped: dict[str, str] = {}

    def keep(key: str, points: Points, tolerance: float = CONSTANT_TOLERANCE) -> bool:
        reason = why_not_drawn(points, tolerance)
        if reason:
            skipped[key] = _stated(key, reason, points)
        return not reason

    losses = {
        key[len(LOSS_PREFIX) :]: points
        for key, points in curves.items()
        if key.startswith(LOSS_PREFIX) and keep(key, points)
    }
    if losses:
        charts.append(line_chart(losses, "training loss (loss/*)"))
    for key, points in curves.items():
        if key in SYSTEM_KEYS or key.startswith(LOSS_PREFIX):
            continue
        if key.endswith(NOT_CHARTED_SUFFIXES):
            continue
        if keep(key, points):
            charts.append(line_chart({key: points}, key))
    for title, series in SYSTEM_CHARTS:
        present = {
            name: [(x, y / divisor) for x, y in curves[key]]
            for key, name, divisor in series
            if key in curves and keep(key, curves[key], FLAT_ON_A_ZERO_AXIS)
        }
        if present:
            charts.append(line_chart(present, title, include_zero=True))

    parts = ["<h2>Curves</h2>"]
    if charts:
        parts.append(f'<div class="charts">{"".join(charts)}</div>')
    else:
        parts.append('<p class="muted">No figure changed over two or more rounds.</p>')
    if skipped:
        items = "; ".join(f"{_esc(key)} {_esc(text)}" for key, text in sorted(skipped.items()))
        parts.append(
            f'<p class="muted not-drawn">Not drawn (a chart would show nothing): {items}.</p>'
        )
    if failed:
        items = "".join(
            f"<li>round {_esc(str(r))}: client(s) {_esc(str(clients))}</li>"
            for r, clients in failed
        )
        parts.append(f'<p class="muted">Rounds with failed clients:</p><ul>{items}</ul>')
    if not_numbers:
        parts.append(
            f'<p class="muted">Not plotted (not numbers): {_esc(", ".join(sorted(not_numbers)))}'
            "</p>"
        )
    return "".join(parts)


def _stated(key: str, reason: str, points: Points) -> str:
    """How a series that is not drawn reads in words: its value, and where."""
    finite = [(x, y) for x, y in points if math.isfinite(x) and math.isfinite(y)]
    if reason == "constant":
        values = {y for _, y in finite}
        sign = "=" if len(values) == 1 else "≈"  # flat to the eye, not to the byte
        return f"{sign} {shown(key, finite[0][1])} in all {len(finite)} rounds"
    if reason == "one point":
        x, y = finite[0]
        return f"= {shown(key, y)} (round {format_number(x)} only)"
    return "(no finite value)"


def _esc(text: str) -> str:
    return html.escape(text, quote=True)


def _is_number(value: Any) -> TypeGuard[int | float]:
    return isinstance(value, int | float) and not isinstance(value, bool)


__all__ = ["curves_section", "per_round_series", "worth_drawing"]
