"""The report's full table: every final figure, its centralized baseline, and what it
was computed on.

Counts of bytes and seconds are shown in human units with the raw figure beside
them, so the table can be read and still checked against ``summary.json``.
"""

from __future__ import annotations

import html
import json
import math
from typing import Any

from fedgen.report.svg import format_number
from fedgen.report.units import format_bytes, format_duration

#: What the loop's own figures are, for keys the evaluator does not describe.
BUILTIN_DESCRIPTIONS = {
    "status": "completed, interrupted (Ctrl-C; resume with fedgen run --resume), "
    "budget_exhausted (the privacy budget allowed no more rounds) or failed (rounds in a "
    "row, or every round, had no usable update: see stop_reason)",
    "failed_rounds": "rounds with no usable client update (the model kept as it was)",
    "rounds": "rounds run",
    "num_clients": "clients in the federation",
    "seconds": "wall-clock time of all rounds, evaluation included",
    "bytes_up": "every client's replies, as encoded on the wire",
    "bytes_down": "every job sent to a client, as encoded on the wire",
    "bytes_total": "bytes_up + bytes_down",
    "failures": "client failures (crashes, timeouts, rejected updates), counted per round",
    "parameters": "trainable parameters of the model",
    "evaluated_round": "the round after which the quality figures below were measured",
}
BYTE_KEYS = {"bytes_up", "bytes_down", "bytes_total"}
SECOND_KEYS = {"seconds", "eval_seconds"}


def figures_table_section(summary: dict[str, Any] | None, metrics: list[dict[str, Any]]) -> str:
    """The "All figures" section from ``summary.json``; without one, the last recorded
    round of ``metrics.jsonl`` (the best account of where an unfinished run got)."""
    if summary is None:
        return _last_round_section(metrics)
    descriptions = summary.get("descriptions")
    descriptions = descriptions if isinstance(descriptions, dict) else {}
    centralized = summary.get("centralized")
    centralized = centralized if isinstance(centralized, dict) else None
    keys = [key for key in summary if key not in ("descriptions", "centralized")]
    if centralized:
        keys += [key for key in centralized if key not in keys]
    header = "<tr><th>figure</th><th>this run</th>"
    header += "<th>centralized baseline</th>" if centralized is not None else ""
    header += "<th>computed on</th></tr>"
    rows = []
    for key in keys:
        cells = [
            f"<td>{_esc(key)}</td>",
            f"<td class='num'>{_esc(shown(key, summary.get(key)))}</td>",
        ]
        if centralized is not None:
            cells.append(f"<td class='num'>{_esc(shown(key, centralized.get(key)))}</td>")
        what = descriptions.get(key) or BUILTIN_DESCRIPTIONS.get(key, "")
        cells.append(f"<td class='desc'>{_esc(str(what))}</td>")
        rows.append(f"<tr>{''.join(cells)}</tr>")
    return f"<h2>All figures</h2><table>{header}{''.join(rows)}</table>"


def _last_round_section(metrics: list[dict[str, Any]]) -> str:
    if not metrics:
        return ""
    rows = "".join(
        f"<tr><td>{_esc(key)}</td><td class='num'>{_esc(shown(key, value))}</td></tr>"
        for key, value in metrics[-1].items()
    )
    return (
        "<h2>Last recorded round</h2>"
        '<p class="muted">summary.json is missing; these figures are the last line of '
        "metrics.jsonl.</p>"
        f"<table><tr><th>metric</th><th>value</th></tr>{rows}</table>"
    )


def shown(key: str, value: Any) -> str:
    """A table cell's text: bytes and seconds in human units with the raw figure beside."""
    if value is None:
        return "—"
    if isinstance(value, bool) or not isinstance(value, int | float):
        return value if isinstance(value, str) else json.dumps(value)
    if not math.isfinite(value):
        return format_number(value)
    if key in BYTE_KEYS:
        return f"{format_bytes(value)} ({value:,.0f} B)"
    if key in SECOND_KEYS:
        return f"{format_duration(value)} ({format_number(value)} s)"
    return format_number(value)


def _esc(text: str) -> str:
    return html.escape(text, quote=True)
