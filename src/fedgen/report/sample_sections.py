"""The report's samples: the newest picture for the top of the page, the earlier
grids (thinned, newest first) and the newest generated text.

Pictures are embedded as base64 ``data:`` URIs so the page stays one file; an
unreadable or truncated PNG becomes a problem note, never an exception.
"""

from __future__ import annotations

import base64
import html
import io
import re
from collections.abc import Mapping
from pathlib import Path

from PIL import Image

from fedgen.report.evaluated import UNRECORDED


def newest_samples(
    images: list[Path],
    texts: list[Path],
    class_names: list[str],
    problems: list[str],
    models: Mapping[int, str] | None = None,
) -> tuple[Path | None, str]:
    """The newest sample picture (a grid, or a table's figure), else the start of the
    newest generated text, as HTML for the top of the page; and the picture's path.
    ``models``: round -> the model its samples were drawn with, in words."""
    models = models or {}
    pictures = [p for p in images if "_denoising" not in p.stem]
    for path in sorted(pictures, key=lambda p: (_round_of(p), p.name), reverse=True):
        embedded = _embed_png(path, problems)
        if embedded is None:
            continue
        uri, (width, height) = embedded
        label = f"round {_round_of(path)}" if _round_of(path) >= 0 else path.stem
        caption = f"Generated samples, {label} (the newest)"
        if _round_of(path) in models:
            caption += f", drawn with {models[_round_of(path)]}"
        if class_names:
            caption += f"; one row per class: {', '.join(class_names)}"
        return path, (
            f'<figure><img src="{uri}" width="{width}" height="{height}" '
            f'alt="newest generated samples, {_esc(label)}"><figcaption>{_esc(caption)}'
            "</figcaption></figure>"
        )
    if texts:
        path = max(texts, key=lambda p: (_round_of(p), "_client_" not in p.stem, p.name))
        text = _read_sample_text(path, problems)
        if text is not None:
            cut = text[:2000] + ("\n[...]" if len(text) > 2000 else "")
            who = _text_model(path, models)
            return None, (
                f'<p class="muted">Newest generated text ({_esc(path.name)}), {_esc(who)}:</p>'
                f"<pre>{_esc(cut)}</pre>"
            )
    return None, ""


def text_samples_section(
    files: list[Path], problems: list[str], models: Mapping[int, str] | None = None
) -> str:
    """The newest round's generated text, escaped (a model may write any markup): the
    evaluated model's (``models``: round -> that model in words), then each client's own
    where clients keep personal tensors."""
    models = models or {}
    if not files:
        return ""
    newest = max(_round_of(path) for path in files)
    parts = []
    for path in sorted(p for p in files if _round_of(p) == newest):
        text = _read_sample_text(path, problems)
        if text is None:
            continue
        if len(text) > 20_000:
            text = text[:20_000] + "\n[... cut at 20,000 characters]"
        title = _text_model(path, models)
        parts.append(f"<h3>{_esc(title)} ({_esc(path.name)})</h3><pre>{_esc(text)}</pre>")
    return (
        f'<h2>Generated text</h2><p class="muted">Round {newest}, the newest of the '
        f"{len(files)} sample file(s): each block is a prompt and the model's continuation."
        f"</p>{''.join(parts)}"
    )


def samples_section(
    files: list[Path],
    limit: int,
    class_names: list[str],
    problems: list[str],
    models: Mapping[int, str] | None = None,
) -> str:
    """The sample grids below the top of the page, newest first: at most ``limit``,
    evenly spread over the run and always keeping the first and the newest; each
    captioned with the model it was drawn with (``models``: round -> it in words)."""
    models = models or {}
    if not files:
        return ""
    ordered = sorted(files, key=lambda path: (_round_of(path), path.name))
    shown = _spread(ordered, limit)
    figures = []
    rounds = []
    for path in reversed(shown):  # newest first: the latest samples matter most
        embedded = _embed_png(path, problems)
        if embedded is None:
            continue
        uri, (width, height) = embedded
        round_number = _round_of(path)
        label = f"round {round_number}" if round_number >= 0 else path.stem
        rounds.append(label)
        # Under partial participation the largest trained client can change between rounds.
        who = f" · {models[round_number]}" if round_number in models else ""
        figures.append(
            f'<figure><img src="{uri}" width="{width}" height="{height}" '
            f'alt="generated samples, {_esc(label)}"><figcaption><strong>{_esc(label)}</strong>'
            f"{_esc(who)} · {_esc(path.name)}</figcaption></figure>"
        )
    if not figures:
        return ""
    note = f"{len(figures)} grid(s), newest first: {', '.join(rounds)}."
    if len(shown) < len(files):
        note += f" Showing {len(shown)} of {len(files)} grids, spread over the run."
    if class_names:
        note += f" Rows are classes, top to bottom: {', '.join(class_names)}."
    return (
        f'<h2>Generated samples of earlier rounds</h2><p class="muted">{_esc(note)}</p>'
        f'<div class="grids">{"".join(figures)}</div>'
    )


def _text_model(path: Path, models: Mapping[int, str]) -> str:
    """The model a text sample file was written with: a ``_client_N`` file's client's own,
    else the round's evaluated model (``UNRECORDED`` when the run did not record it)."""
    if "_client_" in path.stem:
        return f"client {path.stem.split('_client_')[1]}'s own model"
    return models.get(_round_of(path), UNRECORDED)


def _round_of(path: Path) -> int:
    """The round number in a sample file name like ``round_0005.png``, or -1."""
    match = re.search(r"(\d+)", path.stem)
    return int(match.group(1)) if match else -1


def _spread(items: list[Path], limit: int) -> list[Path]:
    """At most ``limit`` items, evenly spaced, always keeping the first and the last."""
    if limit < 1:
        return []
    if len(items) <= limit:
        return items
    if limit == 1:
        return [items[-1]]
    picks = sorted({round(k * (len(items) - 1) / (limit - 1)) for k in range(limit)})
    return [items[i] for i in picks]


def _embed_png(path: Path, problems: list[str]) -> tuple[str, tuple[int, int]] | None:
    """A ``data:`` URI and pixel size for a PNG, or None (and a note) if it is unreadable."""
    try:
        data = path.read_bytes()
        with Image.open(io.BytesIO(data)) as image:
            image.verify()  # catches a grid truncated by an interrupted write
        with Image.open(io.BytesIO(data)) as image:
            if image.format != "PNG":
                raise ValueError(f"it is {image.format}, not PNG")
            size = image.size
    except (OSError, ValueError, SyntaxError) as error:
        problems.append(f"samples/{path.name} is not a readable PNG ({error}); skipped")
        return None
    return "data:image/png;base64," + base64.b64encode(data).decode("ascii"), size


def _read_sample_text(path: Path, problems: list[str]) -> str | None:
    try:
        return path.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as error:
        problems.append(f"samples/{path.name} could not be read ({error})")
        return None


def _esc(text: str) -> str:
    return html.escape(text, quote=True)
