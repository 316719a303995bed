"""Inline SVG charts for the run report: line charts of metrics, heat-maps of partitions.

Hand-written because the report must be one self-contained file with no plotting
dependency and no JavaScript. Every piece of text goes through ``html.escape``.
"""

from __future__ import annotations

import html
import math

# Okabe-Ito: distinguishable with the common colour-vision deficiencies.
PALETTE = (
    "#0072B2",
    "#D55E00",
    "#009E73",
    "#CC79A7",
    "#E69F00",
    "#56B4E9",
    "#000000",
    "#F0E442",
)

CHAR_WIDTH = 6.6  # approximate advance of one 11px sans-serif character, for layout
FONT = 'font-family="system-ui, -apple-system, Segoe UI, Helvetica, Arial, sans-serif"'
MAX_POINT_TOOLTIPS = 200  # beyond this, per-point <title> elements only bloat the file


def format_number(value: float, digits: int = 4) -> str:
    """A short, readable form of ``value``: integers as integers, ``12.35``, ``1.2e-05``.

    ``digits`` is the number of significant digits kept for non-integers.
    """
    if isinstance(value, bool):
        return str(value)
    if not math.isfinite(value):
        return str(value)
    if float(value).is_integer() and abs(value) < 1e15:
        return str(int(value))
    if value != 0 and (abs(value) < 1e-3 or abs(value) >= 1e15):
        return f"{value:.{max(digits - 1, 0)}e}"
    return f"{value:.{digits}g}"


def line_chart(
    series: dict[str, list[tuple[float, float]]],
    title: str,
    x_label: str = "round",
    width: int = 480,
    height: int = 280,
    include_zero: bool = False,
) -> str:
    """An inline SVG line chart, one colour per series, with axes, ticks and a legend.

    Args:
        series: name -> ``(x, y)`` points. Points with a NaN or infinite coordinate are
            skipped and break the line there; a series with one point is drawn as a dot.
        title: shown above the plot.
        x_label: shown under the x axis.
        include_zero: extend the y axis to 0, for counts (bytes, clients) where a dip from
            6400 to 5760 should not look like a fall to nothing.

    Returns:
        An ``<svg>`` element as a string, ready to paste into HTML.
    """
    clean: dict[str, list[list[tuple[float, float]]]] = {
        name: _finite_runs(points) for name, points in series.items()
    }
    xs = [x for runs in clean.values() for run in runs for x, _ in run]
    ys = [y for runs in clean.values() for run in runs for _, y in run]

    # A lone series named like the chart needs no legend.
    legend_names = [] if list(series) == [title] else list(series)
    legend_rows = _legend_rows(legend_names, width - 24)
    top = 30 + 16 * len(legend_rows)
    bottom, right = 40, 16
    parts = [_svg_open(width, height, title)]
    parts.append(
        f'<text x="{width / 2:.1f}" y="18" text-anchor="middle" font-size="13" '
        f'font-weight="600" {FONT}>{_esc(title)}</text>'
    )
    for row_index, row in enumerate(legend_rows):
        x = 12.0
        legend_y = 34.0 + 16 * row_index
        for name, color_index in row:
            color = PALETTE[color_index % len(PALETTE)]
            parts.append(
                f'<line x1="{x:.1f}" y1="{legend_y - 4}" x2="{x + 16:.1f}" y2="{legend_y - 4}" '
                f'stroke="{color}" stroke-width="2.5"/>'
            )
            parts.append(
                f'<text x="{x + 20:.1f}" y="{legend_y}" font-size="11" {FONT}>{_esc(name)}</text>'
            )
            x += 20 + CHAR_WIDTH * len(name) + 16

    if not xs:
        parts.append(
            f'<text x="{width / 2:.1f}" y="{(top + height - bottom) / 2:.1f}" '
            f'text-anchor="middle" font-size="12" fill="#666" {FONT}>'
            f"no finite values to plot</text>"
        )
        parts.append("</svg>")
        return "".join(parts)

    integer_x = all(float(x).is_integer() for x in xs)
    # The x axis spans exactly the data (rounds 1..20 should not start at round 0); the
    # y axis widens to round tick values so the curve never touches the frame.
    x0, x1 = min(xs), max(xs)
    if x0 == x1:
        x0, x1 = x0 - 1, x1 + 1
    x_ticks = [
        tick
        for tick in _nice_ticks(x0, x1, target=6, integer=integer_x)
        if x0 - 1e-9 * (x1 - x0) <= tick <= x1 + 1e-9 * (x1 - x0)
    ]
    y_low, y_high = min(ys), max(ys)
    if include_zero:
        y_low, y_high = min(y_low, 0.0), max(y_high, 0.0)
    integer_y = all(float(y).is_integer() for y in ys)  # counts: no "7.5 clients" tick
    y_ticks = _nice_ticks(y_low, y_high, target=5, integer=integer_y)
    y_tick_labels = _tick_labels(y_ticks)
    x_tick_labels = _tick_labels(x_ticks)
    left = 14 + CHAR_WIDTH * max(len(label) for label in y_tick_labels)
    plot_w, plot_h = width - left - right, height - top - bottom
    y0, y1 = y_ticks[0], y_ticks[-1]

    def px(x: float) -> float:
        return left + (x - x0) / (x1 - x0) * plot_w

    def py(y: float) -> float:
        return top + plot_h - (y - y0) / (y1 - y0) * plot_h

    for tick, label in zip(y_ticks, y_tick_labels, strict=True):
        y = py(tick)
        parts.append(
            f'<line x1="{left:.1f}" y1="{y:.1f}" x2="{left + plot_w:.1f}" y2="{y:.1f}" '
            f'stroke="#e5e5e5" stroke-width="1"/>'
        )
        parts.append(
            f'<text x="{left - 6:.1f}" y="{y + 3.5:.1f}" text-anchor="end" font-size="11" '
            f'fill="#333" {FONT}>{_esc(label)}</text>'
        )
    for tick, label in zip(x_ticks, x_tick_labels, strict=True):
        x = px(tick)
        parts.append(
            f'<line x1="{x:.1f}" y1="{top + plot_h:.1f}" x2="{x:.1f}" y2="{top + plot_h + 4:.1f}" '
            f'stroke="#333" stroke-width="1"/>'
        )
        parts.append(
            f'<text x="{x:.1f}" y="{top + plot_h + 16:.1f}" text-anchor="middle" font-size="11" '
            f'fill="#333" {FONT}>{_esc(label)}</text>'
        )
    parts.append(
        f'<path d="M{left:.1f},{top:.1f} V{top + plot_h:.1f} H{left + plot_w:.1f}" '
        f'fill="none" stroke="#333" stroke-width="1"/>'
    )
    parts.append(
        f'<text x="{left + plot_w / 2:.1f}" y="{height - 6}" text-anchor="middle" '
        f'font-size="11" fill="#333" {FONT}>{_esc(x_label)}</text>'
    )

    total_points = len(xs)
    for color_index, (name, runs) in enumerate(clean.items()):
        color = PALETTE[color_index % len(PALETTE)]
        for run in runs:
            if len(run) > 1:
                coords = " ".join(f"{px(x):.1f},{py(y):.1f}" for x, y in run)
                parts.append(
                    f'<polyline points="{coords}" fill="none" stroke="{color}" '
                    f'stroke-width="2" stroke-linejoin="round"/>'
                )
            # Dots mark the measured points when there are few of them, and always mark
            # an isolated point, which would otherwise be invisible.
            if len(run) == 1 or total_points <= 60:
                for x, y in run:
                    tooltip = ""
                    if total_points <= MAX_POINT_TOOLTIPS:
                        tooltip = (
                            f"<title>{_esc(name)}: {_esc(x_label)} {_esc(format_number(x))}, "
                            f"{_esc(format_number(y))}</title>"
                        )
                    parts.append(
                        f'<circle cx="{px(x):.1f}" cy="{py(y):.1f}" r="2.8" '
                        f'fill="{color}">{tooltip}</circle>'
                    )
    parts.append("</svg>")
    return "".join(parts)


def heatmap(
    matrix: list[list[float]],
    row_labels: list[str],
    col_labels: list[str],
    title: str,
) -> str:
    """An inline SVG heat-map with each cell's value written in it.

    Used for labels (or domains) per client: one row per client, one column per class.
    Darker blue means a larger value relative to the largest cell; NaN cells are grey.

    Raises:
        ValueError: if the matrix shape does not match the labels.
    """
    if len(matrix) != len(row_labels) or any(len(row) != len(col_labels) for row in matrix):
        raise ValueError(
            f"heatmap needs one row label per row and one column label per column; got "
            f"{len(matrix)} rows for {len(row_labels)} row labels and row lengths "
            f"{sorted({len(row) for row in matrix})} for {len(col_labels)} column labels"
        )
    finite = [v for row in matrix for v in row if math.isfinite(v)]
    peak = max(finite, default=0.0)
    cell_texts = [[format_number(v) if math.isfinite(v) else "" for v in row] for row in matrix]
    longest_cell = max((len(text) for row in cell_texts for text in row), default=1)
    cell_w = max(34.0, CHAR_WIDTH * longest_cell + 10)
    cell_h = 22.0
    longest_col = max((len(label) for label in col_labels), default=1)
    rotate = CHAR_WIDTH * longest_col > cell_w - 4
    # Rotated labels at -45 degrees take sin(45) of their length upwards and to the right.
    header_h = 10 + (0.71 * CHAR_WIDTH * longest_col + 6 if rotate else 14)
    overhang = 0.71 * CHAR_WIDTH * longest_col if rotate else 0.0
    label_w = 12 + CHAR_WIDTH * max((len(label) for label in row_labels), default=1)
    top = 26 + header_h
    width = label_w + cell_w * len(col_labels) + max(overhang - cell_w / 2, 0.0) + 12
    height = top + cell_h * len(row_labels) + 8

    parts = [_svg_open(math.ceil(width), math.ceil(height), title)]
    parts.append(f'<text x="8" y="18" font-size="13" font-weight="600" {FONT}>{_esc(title)}</text>')
    for j, label in enumerate(col_labels):
        cx = label_w + cell_w * (j + 0.5)
        if rotate:
            parts.append(
                f'<text x="{cx:.1f}" y="{top - 6:.1f}" font-size="11" fill="#333" '
                f'transform="rotate(-45 {cx:.1f} {top - 6:.1f})" {FONT}>{_esc(label)}</text>'
            )
        else:
            parts.append(
                f'<text x="{cx:.1f}" y="{top - 6:.1f}" text-anchor="middle" font-size="11" '
                f'fill="#333" {FONT}>{_esc(label)}</text>'
            )
    for i, (label, row) in enumerate(zip(row_labels, matrix, strict=True)):
        y = top + cell_h * i
        parts.append(
            f'<text x="{label_w - 6:.1f}" y="{y + cell_h / 2 + 4:.1f}" text-anchor="end" '
            f'font-size="11" fill="#333" {FONT}>{_esc(label)}</text>'
        )
        for j, value in enumerate(row):
            x = label_w + cell_w * j
            share = value / peak if math.isfinite(value) and peak > 0 else 0.0
            fill = _blue(share) if math.isfinite(value) else "#dddddd"
            parts.append(
                f'<rect x="{x:.1f}" y="{y:.1f}" width="{cell_w:.1f}" height="{cell_h:.1f}" '
                f'fill="{fill}" stroke="#ffffff" stroke-width="1"/>'
            )
            text_color = "#ffffff" if share > 0.55 else "#111111"
            parts.append(
                f'<text x="{x + cell_w / 2:.1f}" y="{y + cell_h / 2 + 4:.1f}" '
                f'text-anchor="middle" font-size="11" fill="{text_color}" {FONT}>'
                f"{_esc(cell_texts[i][j])}</text>"
            )
    parts.append("</svg>")
    return "".join(parts)


def _esc(text: str) -> str:
    return html.escape(str(text), quote=True)


def _svg_open(width: int, height: int, title: str) -> str:
    return (
        f'<svg xmlns="http://www.w3.org/2000/svg" width="{width}" height="{height}" '
        f'viewBox="0 0 {width} {height}" role="img" aria-label="{_esc(title)}">'
        f"<title>{_esc(title)}</title>"
        f'<rect width="{width}" height="{height}" fill="#ffffff"/>'
    )


def _finite_runs(points: list[tuple[float, float]]) -> list[list[tuple[float, float]]]:
    """Points sorted by x and split into runs wherever a non-finite point was dropped."""
    runs: list[list[tuple[float, float]]] = [[]]
    for x, y in sorted(points, key=lambda p: p[0] if math.isfinite(p[0]) else math.inf):
        if math.isfinite(x) and math.isfinite(y):
            runs[-1].append((float(x), float(y)))
        elif runs[-1]:
            runs.append([])
    return [run for run in runs if run]


def _legend_rows(names: list[str], available: float) -> list[list[tuple[str, int]]]:
    """Legend entries (name, colour index) wrapped into rows that fit ``available`` pixels."""
    rows: list[list[tuple[str, int]]] = []
    used = math.inf
    for index, name in enumerate(names):
        entry = 20 + CHAR_WIDTH * len(name) + 16
        if used + entry > available:
            rows.append([])
            used = 0.0
        rows[-1].append((name, index))
        used += entry
    return rows


def _nice_ticks(low: float, high: float, target: int, integer: bool) -> list[float]:
    """Evenly spaced round tick values covering [low, high], about ``target`` of them."""
    if high - low <= 1e-9 * max(abs(low), abs(high)):
        # Equal, or equal but for float rounding (a mean of equal ratios): one value.
        high = low
        pad = 1.0 if integer or low == 0 else abs(low) * 0.1
        low, high = low - pad, high + pad
    raw = (high - low) / max(target - 1, 1)
    magnitude = 10 ** math.floor(math.log10(raw))
    step = next(m * magnitude for m in (1, 2, 2.5, 5, 10) if m * magnitude >= raw)
    if integer:
        step = max(1.0, round(step)) if step >= 1 else 1.0
    first = math.floor(low / step + 1e-9) * step
    last = math.ceil(high / step - 1e-9) * step
    count = round((last - first) / step)
    return [first + k * step for k in range(count + 1)]


def _tick_labels(ticks: list[float]) -> list[str]:
    """Labels for evenly spaced ticks with just enough decimals; k/M/G for large values."""
    step = ticks[1] - ticks[0] if len(ticks) > 1 else 1.0
    biggest = max(abs(t) for t in ticks)
    divisor, suffix = 1.0, ""
    if biggest >= 1e4:  # "250k" reads faster than "250000"; "5000" is still fine as is
        for size, name in ((1e9, "G"), (1e6, "M"), (1e3, "k")):
            if biggest >= size:
                divisor, suffix = size, name
                break
    scaled_step = step / divisor
    if 0 < scaled_step < 1e-4:
        return [f"{t:.1e}" for t in ticks]
    decimals = max(0, -math.floor(math.log10(scaled_step) + 1e-9)) if scaled_step > 0 else 0
    if scaled_step * 10**decimals % 1 > 1e-6:  # steps like 2.5 need one more decimal
        decimals += 1
    labels = []
    for tick in ticks:
        value = tick / divisor
        if abs(value) < scaled_step * 1e-6:
            # Not "-0.0" from floating-point residue, nor "0M".
            labels.append("0" if suffix else f"{0.0:.{decimals}f}")
            continue
        labels.append(f"{value:.{decimals}f}{suffix}")
    return labels


def _blue(share: float) -> str:
    """A colour from near-white (0) to dark blue (1)."""
    share = min(max(share, 0.0), 1.0)
    light, dark = (247, 251, 255), (8, 48, 107)
    rgb = (round(a + (b - a) * share) for a, b in zip(light, dark, strict=True))
    return "#{:02x}{:02x}{:02x}".format(*rgb)
