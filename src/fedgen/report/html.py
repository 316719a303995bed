"""The run report: one self-contained HTML page a person can open from any run folder.

It reads what the training loop wrote (``config.yaml``, ``metrics.jsonl``,
``summary.json``, ``partition.json``, ``samples/*.png``) and renders whatever
exists; a missing or unreadable file becomes a note at the top of the page, never
an exception, because the runs most in need of a look are the interrupted ones.
Images are embedded as base64 data URIs and charts as inline SVG, so the single
file can be mailed or archived without its folder.
"""

from __future__ import annotations

import html
import json
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, TypeGuard

import yaml

from fedgen.report.bytes_curve import quality_by_bytes_section
from fedgen.report.curves import curves_section
from fedgen.report.downstream_section import downstream_section
from fedgen.report.evaluated import UNRECORDED, models_by_round
from fedgen.report.figures_table import figures_table_section
from fedgen.report.headline import headline_section
from fedgen.report.partition import partition_section
from fedgen.report.sample_sections import newest_samples, samples_section, text_samples_section
from fedgen.report.svg import format_number

REPORT_NAME = "report.html"

MISSING_MEANS = {
    "config.yaml": "the resolved config cannot be shown",
    "summary.json": "no final figures; the run may not have finished",
    "metrics.jsonl": "no metric curves; the run may have stopped before its first round ended",
    "partition.json": "no partition heat-map",
    "samples/": "no sample grids; no evaluation round may have run yet",
}

CSS = """
body { font-family: system-ui, -apple-system, "Segoe UI", Helvetica, Arial, sans-serif;
       color: #1a1a1a; background: #fafafa; margin: 0; line-height: 1.45; }
main { max-width: 1080px; margin: 0 auto; padding: 24px 28px 48px; }
h1 { font-size: 1.6rem; margin: 0 0 4px; }
h2 { font-size: 1.2rem; margin: 32px 0 10px; padding-bottom: 4px; border-bottom: 1px solid #ddd; }
.meta { color: #555; font-size: 0.9rem; margin: 0; }
.notes { background: #fff8e1; border: 1px solid #f0d890; border-radius: 6px;
         padding: 10px 16px; margin: 16px 0; }
.notes ul { margin: 4px 0 0; padding-left: 20px; }
table { border-collapse: collapse; background: #fff; font-size: 0.92rem; }
th, td { border: 1px solid #ddd; padding: 5px 10px; text-align: left; vertical-align: top; }
th { background: #f0f0f0; font-weight: 600; }
td.num { text-align: right; font-variant-numeric: tabular-nums; white-space: nowrap; }
td.desc { color: #444; }
.charts { display: flex; flex-wrap: wrap; gap: 14px; }
.charts svg, .heat svg { background: #fff; border: 1px solid #e2e2e2; border-radius: 4px; }
.heat { max-height: 640px; overflow: auto; margin-bottom: 14px; }
details { background: #fff; border: 1px solid #ddd; border-radius: 4px; padding: 6px 12px; }
summary { cursor: pointer; font-weight: 600; }
pre { font-size: 0.85rem; overflow-x: auto; margin: 8px 0 4px; }
.grids { display: flex; flex-wrap: wrap; gap: 18px; }
figure { margin: 0; background: #fff; border: 1px solid #e2e2e2; border-radius: 4px; padding: 8px; }
figure img { display: block; max-width: 100%; height: auto; image-rendering: pixelated; }
figcaption { font-size: 0.9rem; color: #333; margin-top: 6px; }
.muted { color: #666; font-size: 0.9rem; }
.glance-row { display: flex; flex-wrap: wrap; gap: 20px; align-items: flex-start; }
.newest figure img { min-width: 280px; }
.newest pre { max-height: 420px; max-width: 620px; overflow: auto; background: #fff;
              border: 1px solid #e2e2e2; padding: 8px; }
.cards { display: grid; grid-template-columns: repeat(auto-fill, minmax(190px, 1fr));
         gap: 10px; flex: 1; min-width: 280px; }
.card { background: #fff; border: 1px solid #e2e2e2; border-radius: 6px; padding: 10px 12px; }
.card .label { color: #555; font-size: 0.85rem; }
.card .value { font-size: 1.5rem; font-weight: 600; font-variant-numeric: tabular-nums; }
.card .detail { color: #666; font-size: 0.8rem; }
"""


@dataclass
class _Notes:
    """What the page must warn about: missing and unreadable files, skipped lines."""

    missing: list[str] = field(default_factory=list)
    problems: list[str] = field(default_factory=list)


def write_report(run_dir: Path, max_sample_grids: int = 12) -> Path:
    """Render ``run_dir/report.html`` from the files a run wrote, and return its path.

    Args:
        run_dir: a run folder; any of its files may be missing (the page says which).
        max_sample_grids: at most this many sample grids are embedded, evenly spread over
            the run and always including the first and the newest, to bound the file size.

    Raises:
        FileNotFoundError: if ``run_dir`` is not a folder.
    """
    run_dir = Path(run_dir)
    if not run_dir.is_dir():
        raise FileNotFoundError(
            f"run folder {run_dir} does not exist; pass the folder a training run wrote "
            f"(it holds config.yaml, metrics.jsonl, summary.json and samples/)"
        )
    page = _render(run_dir, max_sample_grids)
    path = run_dir / REPORT_NAME
    partial = path.with_name(REPORT_NAME + ".partial")
    partial.write_text(page, encoding="utf-8")
    partial.replace(path)
    return path


def _render(run_dir: Path, max_sample_grids: int) -> str:
    notes = _Notes()
    config_text = _read_text(run_dir / "config.yaml", notes)
    config = _parse_yaml(config_text, notes) if config_text is not None else None
    summary = _read_json(run_dir / "summary.json", notes)
    partition = _read_json(run_dir / "partition.json", notes)
    metrics = _read_metrics(run_dir / "metrics.jsonl", notes)
    # A simulated attack's record; most runs have none, so it is not "missing".
    attack_file = run_dir / "attackers.json"
    attack = _read_json(attack_file, notes) if attack_file.is_file() else None
    # The downstream classifier's arms, when the recipe had a downstream: section.
    downstream_file = run_dir / "downstream.json"
    downstream = _read_json(downstream_file, notes) if downstream_file.is_file() else None
    samples_dir = run_dir / "samples"
    sample_files = sorted(samples_dir.glob("*.png")) if samples_dir.is_dir() else []
    text_files = sorted(samples_dir.glob("*.txt")) if samples_dir.is_dir() else []
    if not sample_files and not text_files:
        notes.missing.append("samples/")

    name = run_dir.resolve().name
    if isinstance(config, dict) and isinstance(config.get("name"), str) and config["name"]:
        name = config["name"]
    class_names = _class_names(partition)

    body = [
        f"<h1>Run {_esc(name)}</h1>",
        f'<p class="meta">Folder <code>{_esc(str(run_dir.resolve()))}</code> · '
        f"{len(metrics)} round(s) recorded · report written "
        f"{datetime.now(UTC).strftime('%Y-%m-%d %H:%M UTC')}</p>",
    ]
    # Which model each evaluated round's samples were drawn with (eval.model).
    models = models_by_round(metrics, summary)
    newest, newest_html = newest_samples(
        sample_files, text_files, class_names, notes.problems, models
    )
    # What a person came for first (samples, headline figures), then curves worth
    # drawing, the partition, and only then the full table and the config.
    sections = [
        headline_section(summary, metrics, newest_html),
        _attack_section(attack, metrics, models),
        _privacy_section(summary),
        downstream_section(downstream),
        curves_section(metrics),
        quality_by_bytes_section(metrics),
        _partition_section_of(partition, notes, _attackers(attack)),
        samples_section(
            [p for p in sample_files if p != newest],
            max_sample_grids,
            class_names,
            notes.problems,
            models,
        ),
        text_samples_section(text_files, notes.problems, models),
        figures_table_section(summary, metrics),
        _config_section(config_text),
    ]
    body.append(_failure_box(summary))
    # Notes are known only after every section has looked at its files.
    body.append(_notes_box(notes))
    body.extend(section for section in sections if section)
    return (
        "<!DOCTYPE html>\n"
        '<html lang="en"><head><meta charset="utf-8">'
        '<meta name="viewport" content="width=device-width, initial-scale=1">'
        f"<title>fedgen report: {_esc(name)}</title><style>{CSS}</style></head>"
        f"<body><main>{''.join(body)}</main></body></html>\n"
    )


# --- reading -------------------------------------------------------------------------------


def _read_text(path: Path, notes: _Notes) -> str | None:
    if not path.is_file():
        notes.missing.append(path.name)
        return None
    try:
        return path.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as error:
        notes.problems.append(f"{path.name} could not be read ({error})")
        return None


def _parse_yaml(text: str, notes: _Notes) -> Any:
    try:
        return yaml.safe_load(text)
    except yaml.YAMLError as error:
        notes.problems.append(f"config.yaml is not valid YAML ({error}); shown as text")
        return None


def _read_json(path: Path, notes: _Notes) -> dict[str, Any] | None:
    text = _read_text(path, notes)
    if text is None:
        return None
    try:
        value = json.loads(text)
    except json.JSONDecodeError as error:
        notes.problems.append(f"{path.name} is not valid JSON ({error}); it was skipped")
        return None
    if not isinstance(value, dict):
        notes.problems.append(f"{path.name} holds a {type(value).__name__}, not an object")
        return None
    return value


def _read_metrics(path: Path, notes: _Notes) -> list[dict[str, Any]]:
    text = _read_text(path, notes)
    if text is None:
        return []
    rows: list[dict[str, Any]] = []
    bad: list[int] = []
    for number, line in enumerate(text.splitlines(), start=1):
        if not line.strip():
            continue
        try:
            row = json.loads(line)
        except json.JSONDecodeError:
            bad.append(number)
            continue
        if isinstance(row, dict):
            rows.append(row)
        else:
            bad.append(number)
    if bad:
        notes.problems.append(
            f"metrics.jsonl: skipped {len(bad)} line(s) that are not JSON objects "
            f"(line {', '.join(map(str, bad[:10]))}); a run killed mid-write leaves one"
        )
    return rows


def _class_names(partition: dict[str, Any] | None) -> list[str]:
    names = partition.get("class_names") if partition else None
    return [str(n) for n in names] if isinstance(names, list) else []


# --- sections ------------------------------------------------------------------------------


def _notes_box(notes: _Notes) -> str:
    if not notes.missing and not notes.problems:
        return ""
    items = [
        f"<li>Missing <code>{_esc(name)}</code>: {_esc(MISSING_MEANS.get(name, 'not shown'))}</li>"
        for name in notes.missing
    ]
    items += [f"<li>{_esc(problem)}</li>" for problem in notes.problems]
    return (
        '<div class="notes"><strong>This report is incomplete.</strong>'
        f"<ul>{''.join(items)}</ul></div>"
    )


def _failure_box(summary: dict[str, Any] | None) -> str:
    """Why a run failed, or how many of its rounds kept the previous model, first."""
    if not summary:
        return ""
    if summary.get("status") == "failed":
        return (
            '<div class="notes"><strong>This run failed:</strong> '
            f"{_esc(str(summary.get('stop_reason', '')))}</div>"
        )
    failed = summary.get("failed_rounds")
    if _is_number(failed) and failed > 0:
        return (
            f'<div class="notes">{failed:g} of {_esc(_value(summary.get("rounds")))} rounds had no '
            "usable client update and kept the previous model (<code>round_failed</code> "
            "in <code>metrics.jsonl</code>).</div>"
        )
    return ""


def _partition_section_of(
    partition: dict[str, Any] | None, notes: _Notes, attackers: set[int]
) -> str:
    return partition_section(partition, notes.problems, attackers)


def _privacy_section(summary: dict[str, Any] | None) -> str:
    """The run's differential-privacy guarantee in one sentence, when it has one."""
    if not summary or not _is_number(summary.get("epsilon")):
        return ""
    unit = summary.get("privacy_unit")
    who = {"client": "a whole client's data", "example": "any one training example"}.get(
        str(unit), "each protected record"
    )
    parts = [
        f"<p>This run is (&epsilon;, &delta;)-differentially private for {_esc(who)}: "
        f"&epsilon; = <b>{_esc(_value(summary['epsilon']))}</b>, "
        f"&delta; = <b>{_esc(_value(summary.get('delta')))}</b>"
    ]
    details = [
        f"{label} {_esc(_value(summary[key]))}"
        for key, label in (
            ("epsilon_budget", "budget &epsilon;"),
            ("accountant", "accountant"),
            ("noise_multiplier", "client-level noise multiplier"),
            ("client_sample_rate", "client sampling rate"),
            ("dpsgd_noise_multiplier", "DP-SGD noise multiplier"),
            ("dpsgd_noise_multiplier_min", "per client down to"),
            ("dpsgd_accountant", "DP-SGD accountant"),
            ("dpsgd_epsilon_budget", "DP-SGD budget &epsilon;"),
        )
        if key in summary
    ]
    if details:
        parts.append(f" ({', '.join(details)})")
    parts.append(
        ".</p><p class='muted'>Computed with Opacus's accountant from the rounds that ran. "
        "Clients' losses and update norms stay on the clients (not in the metrics); "
        "the server's clip bound and noised unclipped fraction are released. Figures that "
        "also read the clients' data are not covered: an image run's Frechet distance, "
        "KID and precision/recall (their feature classifier is trained on the pooled "
        "training split) and a text run's held-out perplexity; TSTR is.</p>"
    )
    if summary.get("noise_seed") == "root":
        parts.append(
            "<p><b>Only against those without this run's config:</b> its noise was drawn "
            "from the root seed (noise_seed: root), so anyone holding config.yaml can "
            "regenerate the noise and remove it. Keep the default noise_seed: secret for a "
            "guarantee that holds against them too.</p>"
        )
    if summary.get("cohort_metrics"):
        parts.append(
            f"<p class='muted'>Per-round cohorts: {_esc(str(summary['cohort_metrics']))}.</p>"
        )
    if summary.get("status") == "budget_exhausted":
        parts.append(f"<p><b>Stopped early:</b> {_esc(str(summary.get('stop_reason', '')))}</p>")
    return "<h2>Privacy</h2>" + "".join(parts)


def _attackers(attack: dict[str, Any] | None) -> set[int]:
    clients = attack.get("clients") if isinstance(attack, dict) else None
    if not isinstance(clients, list):
        return set()
    return {c for c in clients if isinstance(c, int)}


def _attack_section(
    attack: dict[str, Any] | None, metrics: list[dict[str, Any]], models: dict[int, str]
) -> str:
    """The simulated attackers (``attackers.json``) and what the detection stage flagged;
    ``models``: round -> the model its samples were drawn with, in words."""
    if attack is None:
        return ""
    shown = models[max(models)] if models else UNRECORDED
    attackers = _attackers(attack)
    params = attack.get("params") or {}
    parts = [
        "<h2>Simulated attack</h2>",
        f"<p>{len(attackers)} malicious client(s) ran <code>{_esc(str(attack.get('kind')))}"
        f"</code>{' with ' + _esc(json.dumps(params)) if params else ''}: clients "
        f"{_esc(', '.join(map(str, sorted(attackers))) or 'none')} (marked in the partition "
        f"below). The samples show {_esc(shown)}, trained with them.</p>",
    ]
    prefix = "strategy/detect/flag/"
    flagged = [
        int(k[len(prefix) :])
        for m in metrics
        for k in m
        if k.startswith(prefix) and k[len(prefix) :].isdigit()
    ]
    if any("strategy/detect/flagged" in m for m in metrics):
        hits = sum(1 for c in flagged if c in attackers)
        parts.append(
            f'<p class="muted">Detection stage: {len(flagged)} flag(s) over {len(metrics)} '
            f"round(s), {hits} on attackers.</p>"
        )
    return "".join(parts)


def _config_section(text: str | None) -> str:
    if text is None:
        return ""
    lines = text.count("\n") + (0 if text.endswith("\n") else 1)
    return (
        "<h2>Config</h2>"
        f"<details><summary>config.yaml ({lines} lines)</summary>"
        f"<pre>{_esc(text)}</pre></details>"
    )


# --- small helpers -------------------------------------------------------------------------


def _esc(text: str) -> str:
    return html.escape(text, quote=True)


def _is_number(value: Any) -> TypeGuard[int | float]:
    return isinstance(value, int | float) and not isinstance(value, bool)


def _value(value: Any) -> str:
    if value is None:
        return "—"
    if _is_number(value):
        return format_number(value)
    if isinstance(value, str):
        return value
    return json.dumps(value)
