"""A heat-map for many clients: one pixel band per client, drawn as an embedded PNG.

The labelled heat-map (``fedgen.report.svg.heatmap``) writes each count in its cell,
which reads well for a dozen clients; for a thousand it would be thousands of SVG
elements in a page twenty thousand pixels tall. This picture keeps the same colour
scale (white to dark blue, relative to the largest cell; grey for a missing value),
drops the numbers, and names the columns and a few clients along the edge.
"""

from __future__ import annotations

import base64
import html
import io
import math

import numpy as np
from PIL import Image

#: Colour of an empty cell and of the largest one; a missing value is grey.
LIGHT, DARK, MISSING = (247, 251, 255), (8, 48, 107), (221, 221, 221)
CELL_W, MAX_HEIGHT = 28, 600
FONT = 'font-family="system-ui, -apple-system, Segoe UI, Helvetica, Arial, sans-serif"'


def heat_picture(matrix: list[list[float]], col_labels: list[str], title: str) -> str:
    """An inline SVG: ``matrix`` (one row per client) as a PNG band per client, with the
    column labels above and client numbers at a few rows on the left.

    Raises:
        ValueError: if a row's length differs from the number of column labels.
    """
    if not matrix or any(len(row) != len(col_labels) for row in matrix):
        raise ValueError(
            f"heat_picture needs rows of {len(col_labels)} values, one per column label"
        )
    rows, cols = len(matrix), len(col_labels)
    values = np.array(matrix, dtype=float)
    finite = np.isfinite(values)
    peak = values[finite].max(initial=0.0)
    share = np.where(finite & (peak > 0), np.nan_to_num(values) / (peak or 1.0), 0.0)
    light, dark = np.array(LIGHT, dtype=float), np.array(DARK, dtype=float)
    colours = light + (dark - light) * share.clip(0, 1)[..., None]
    colours[~finite] = MISSING
    band = max(1, min(6, MAX_HEIGHT // rows))  # pixels per client
    pixels = np.repeat(np.repeat(colours.round().astype(np.uint8), band, 0), CELL_W, 1)
    buffer = io.BytesIO()
    Image.fromarray(pixels).save(buffer, format="PNG", optimize=True)
    uri = "data:image/png;base64," + base64.b64encode(buffer.getvalue()).decode("ascii")

    # Column labels run up and to the right at 45 degrees: sin(45) of their length.
    rise = 0.71 * 6.6 * max(len(label[:12]) for label in col_labels)
    label_w, top = 90, math.ceil(30 + rise + 8)
    width, height = math.ceil(label_w + cols * CELL_W + rise + 12), top + rows * band + 10
    parts = [
        f'<svg xmlns="http://www.w3.org/2000/svg" width="{width}" height="{height}" '
        f'viewBox="0 0 {width} {height}" role="img" aria-label="{_esc(title)}">'
        f"<title>{_esc(title)}</title>"
        f'<rect width="{width}" height="{height}" fill="#ffffff"/>'
        f'<text x="8" y="18" font-size="13" font-weight="600" {FONT}>{_esc(title)}</text>'
        f'<image x="{label_w}" y="{top}" width="{cols * CELL_W}" height="{rows * band}" '
        f'preserveAspectRatio="none" style="image-rendering: pixelated" href="{uri}"/>'
    ]
    for j, label in enumerate(col_labels):
        x = label_w + CELL_W * (j + 0.5)
        parts.append(
            f'<text x="{x:.1f}" y="{top - 6}" font-size="10" fill="#333" text-anchor="start" '
            f'transform="rotate(-45 {x:.1f} {top - 6})" {FONT}>{_esc(label[:12])}</text>'
        )
    for i in _row_ticks(rows):
        y = top + band * (i + 0.5)
        parts.append(
            f'<text x="{label_w - 6}" y="{y + 3.5:.1f}" text-anchor="end" font-size="10" '
            f'fill="#333" {FONT}>client {i}</text>'
        )
    parts.append("</svg>")
    return "".join(parts)


def _row_ticks(rows: int) -> list[int]:
    """About six client numbers spread from the first to the last row."""
    step = max(1, math.ceil(rows / 6))
    return sorted({*range(0, rows, step), rows - 1})


def _esc(text: str) -> str:
    return html.escape(str(text), quote=True)
