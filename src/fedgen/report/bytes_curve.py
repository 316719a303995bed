"""The report's quality-against-bytes charts: what each evaluation cost in bytes sent.

Communication, not rounds, is what a compressed federation saves, so each quality
figure is also drawn against the cumulative bytes the run's messages carried up to
that round (``bytes_up + bytes_down`` of ``metrics.jsonl``, the encoded wire
lengths). Runs that withhold byte counts (client-level DP) get no chart.
"""

from __future__ import annotations

import html
import math
from collections.abc import Sequence
from typing import Any

from fedgen.report.svg import line_chart
from fedgen.report.worth_drawing import worth_drawing

#: Evaluation figures drawn against bytes, when a run has them.
QUALITY_KEYS = (
    "tstr_accuracy",
    "frechet_distance",
    "kid",
    "precision",
    "recall",
    "perplexity",
    "quality_score",
)


def cumulative_bytes(metrics: Sequence[dict[str, Any]]) -> list[float] | None:
    """Bytes sent up to and including each round, or None when a round withholds them."""
    total, out = 0.0, []
    for row in metrics:
        up, down = row.get("bytes_up"), row.get("bytes_down")
        if not all(isinstance(v, int | float) and math.isfinite(v) for v in (up, down)):
            return None
        total += float(up) + float(down)  # type: ignore[arg-type]
        out.append(total)
    return out


def quality_by_bytes_section(metrics: Sequence[dict[str, Any]]) -> str:
    """An HTML section of one chart per evaluation figure against cumulative MB; ``""``
    when the run has no evaluated round or no byte counts. A figure measured once or
    constant over the run gets no chart (``fedgen.report.worth_drawing``)."""
    sent = cumulative_bytes(metrics)
    if not sent:
        return ""
    charts = []
    for key in QUALITY_KEYS:
        points = [
            (total / 1e6, float(row[key]))
            for row, total in zip(metrics, sent, strict=True)
            if isinstance(row.get(key), int | float)
        ]
        if worth_drawing(points):  # one evaluation, or a constant: nothing to draw
            charts.append(line_chart({key: points}, key, x_label="cumulative MB sent (up + down)"))
    if not charts:
        return ""
    return (
        f'<h2>Quality against bytes sent</h2><p class="muted">{html.escape(_NOTE)}</p>'
        f'<div class="charts">{"".join(charts)}</div>'
    )


_NOTE = (
    "Each evaluation at the bytes all clients' jobs and replies had carried by then, as "
    "encoded on a wire (compressed updates count their compressed size)."
)
