"""Which model a run's samples were drawn with, in words, for the report's headings.

Each evaluated round records it in ``metrics.jsonl`` (``evaluated_model``: ``global``,
``client N`` or ``union of N clients' own models``, after ``eval.model``); runs from
before that record only the final choice, in ``summary.json``'s ``evaluated_model``
sentence.
"""

from __future__ import annotations

import re
from typing import Any

#: What the report says when a round's model is not recorded (older runs).
UNRECORDED = "the evaluated model"


def model_words(label: object) -> str:
    """``global`` -> "the global model", ``client 3`` -> "client 3's own model", ``union
    of 3 clients' own models`` -> "the union of 3 clients' own models"; a summary
    sentence -> its leading phrase; anything else: ``UNRECORDED``."""
    if not isinstance(label, str):
        return UNRECORDED
    if label == "global":
        return "the global model"
    match = re.match(r"client (\d+)(?:'s own model)?", label)
    if match:
        return f"client {match.group(1)}'s own model"
    match = re.match(r"(?:the )?union of (\d+) clients", label)
    if match:
        return f"the union of {match.group(1)} clients' own models"
    for phrase in ("the global model", "the joined model"):
        if label.startswith(phrase):
            return phrase
    return UNRECORDED


def models_by_round(
    metrics: list[dict[str, Any]], summary: dict[str, Any] | None
) -> dict[int, str]:
    """Round -> the model its samples were drawn with, in words, for every evaluated
    round that records one; an older run's final evaluated round from ``summary.json``."""
    found: dict[int, str] = {}
    for row in metrics:
        round_ = row.get("round")
        if isinstance(round_, int) and "evaluated_model" in row:
            found[round_] = model_words(row["evaluated_model"])
    if isinstance(summary, dict):
        last = summary.get("evaluated_round")
        if isinstance(last, int) and last not in found and "evaluated_model" in summary:
            found[last] = model_words(summary["evaluated_model"])
    return found
