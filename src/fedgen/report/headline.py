"""The top of the report: the newest samples beside the few figures a person came for.

Quality (the evaluation's main figures), privacy spent, bytes sent and time taken,
each in the unit a person reads (``fedgen.report.units``), from ``summary.json``, or
from ``metrics.jsonl`` when the run has not finished.
"""

from __future__ import annotations

import html
import math
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, TypeGuard

from fedgen.report.svg import format_number
from fedgen.report.units import format_bytes, format_duration, format_share

#: Quality figures shown at the top, when present: key, label, formatter, direction.
QUALITY: tuple[tuple[str, str, Callable[[float], str], str], ...] = (
    ("tstr_accuracy", "TSTR accuracy", format_share, "higher is better"),
    ("frechet_distance", "Fréchet distance", format_number, "lower is better"),
    ("precision", "precision", format_share, "fidelity, higher is better"),
    ("recall", "recall", format_share, "diversity, higher is better"),
    (
        "kid",
        "kernel distance",
        format_number,
        "on a small CNN's features (not Inception), lower is better",
    ),
    ("perplexity", "perplexity", format_number, "held-out text, lower is better"),
    ("quality_score", "quality score", format_share, "SDMetrics, higher is better"),
    ("ml_efficacy", "ML efficacy", format_number, "train on synthetic rows, test on real"),
    # Per-client figures (eval.per_client): the worst-served tenth of clients, each on
    # its own label distribution, with the global model and with its own.
    (
        "client_tstr_accuracy_global_worst_decile",
        "worst-decile client TSTR, global model",
        format_share,
        "each client's own label mix, higher is better",
    ),
    (
        "client_tstr_accuracy_personal_worst_decile",
        "worst-decile client TSTR, own model",
        format_share,
        "FedPer layers or Ditto model, higher is better",
    ),
    (
        "client_tstr_accuracy_finetuned_worst_decile",
        "worst-decile client TSTR, fine-tuned",
        format_share,
        "after local fine-tuning, higher is better",
    ),
    (
        "client_tstr_accuracy_real_worst_decile",
        "worst-decile client TSTR, real images",
        format_share,
        "real images in place of samples: the room personalization has",
    ),
)


@dataclass(frozen=True)
class Headline:
    """One figure at the top of the report: what, its value in human units, and context."""

    label: str
    value: str
    detail: str = ""


def headline_figures(
    summary: dict[str, Any] | None, metrics: list[dict[str, Any]]
) -> list[Headline]:
    """Quality, privacy, bytes and time; from the summary, else from the rounds recorded."""
    figures = _from_summary(summary) if summary else _from_metrics(metrics)
    return figures


def headline_section(
    summary: dict[str, Any] | None, metrics: list[dict[str, Any]], samples_html: str
) -> str:
    """The "At a glance" section; ``""`` when there is nothing to show at all."""
    figures = headline_figures(summary, metrics)
    if not figures and not samples_html:
        return ""
    cards = "".join(
        f'<div class="card"><div class="label">{_esc(f.label)}</div>'
        f'<div class="value">{_esc(f.value)}</div>'
        + (f'<div class="detail">{_esc(f.detail)}</div>' if f.detail else "")
        + "</div>"
        for f in figures
    )
    return (
        '<section class="glance"><h2>At a glance</h2><div class="glance-row">'
        f'<div class="newest">{samples_html}</div><div class="cards">{cards}</div>'
        "</div></section>"
    )


def _from_summary(summary: dict[str, Any]) -> list[Headline]:
    centralized = summary.get("centralized")
    out = _quality(
        summary,
        summary.get("evaluated_round"),
        centralized if isinstance(centralized, dict) else {},
    )
    out.append(_privacy(summary))
    out.append(_bytes(summary.get("bytes_total"), summary.get("bytes_up"), summary))
    rounds = summary.get("rounds")
    if summary.get("seconds") is None and "cohort_metrics" in summary:
        # Withheld under client-level DP: the run's time follows its cohorts' sizes.
        out.append(Headline("time", "withheld", "client-level DP keeps the cohorts secret"))
    else:
        out.append(_time(summary.get("seconds"), rounds, summary.get("status")))
    return out


def _from_metrics(metrics: list[dict[str, Any]]) -> list[Headline]:
    if not metrics:
        return []
    evaluated = [row for row in metrics if any(_number(row.get(k)) for k, *_ in QUALITY)]
    out = _quality(evaluated[-1], evaluated[-1].get("round")) if evaluated else []
    ups = [row.get("bytes_up") for row in metrics]
    downs = [row.get("bytes_down") for row in metrics]
    if all(_number(v) for v in ups + downs):
        out.append(_bytes(sum(ups) + sum(downs), sum(ups), {}))  # type: ignore[arg-type]
    seconds = [row.get("seconds") for row in metrics]
    if all(_number(v) for v in seconds):
        out.append(_time(sum(seconds), len(metrics), "unfinished"))
    return out


def _quality(
    figures: dict[str, Any], evaluated_round: Any, centralized: dict[str, Any] | None = None
) -> list[Headline]:
    where = f"round {evaluated_round}, " if _number(evaluated_round) else ""
    out = []
    for key, label, fmt, direction in QUALITY:
        value = figures.get(key)
        if not _number(value):
            continue
        detail = where + direction
        if key == "tstr_accuracy" and _number(figures.get("real_test_accuracy")):
            detail += f"; trained on real data: {format_share(figures['real_test_accuracy'])}"
        baseline = (centralized or {}).get(key)
        if _number(baseline):
            detail += f"; centralized baseline: {fmt(baseline)}"
        out.append(Headline(label, fmt(value), detail))
    return out


def _privacy(summary: dict[str, Any]) -> Headline:
    epsilon = summary.get("epsilon")
    if not _number(epsilon):
        return Headline("privacy spent", "no DP", "this run has no differential-privacy guarantee")
    who = {"client": "per client", "example": "per training example"}.get(
        str(summary.get("privacy_unit")), ""
    )
    detail = f"δ = {format_number(summary['delta'])}" if _number(summary.get("delta")) else ""
    budget = summary.get("epsilon_budget")
    if _number(budget):
        detail += f", budget ε = {format_number(budget)}"
    return Headline("privacy spent", f"ε = {epsilon:.3g}", ", ".join(filter(None, [detail, who])))


def _bytes(total: Any, up: Any, summary: dict[str, Any]) -> Headline:
    if not _number(total):
        if summary.get("cohort_metrics") or "bytes_total" in summary:
            return Headline("data sent", "withheld", "client-level DP keeps the cohorts secret")
        return Headline("data sent", "not recorded")
    detail = "jobs and replies as encoded on the wire"
    if _number(up):
        detail = f"{format_bytes(up)} up, {format_bytes(total - up)} down; " + detail
    return Headline("data sent", format_bytes(total), detail)


def _time(seconds: Any, rounds: Any, status: Any) -> Headline:
    if not _number(seconds):
        return Headline("time", "not recorded")
    detail = f"{format_number(rounds)} rounds" if _number(rounds) else ""
    if _number(rounds) and rounds > 0:
        detail += f", {format_duration(seconds / rounds)} each"
    if status and status != "completed":
        detail += f" ({status})"
    return Headline("time", format_duration(seconds), detail.strip())


def _number(value: Any) -> TypeGuard[int | float]:
    return isinstance(value, int | float) and not isinstance(value, bool) and math.isfinite(value)


def _esc(text: str) -> str:
    return html.escape(text, quote=True)
