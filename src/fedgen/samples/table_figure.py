"""A picture of synthetic rows against the real table, drawn from federated statistics.

One panel per column: real against synthetic histograms (categories: the pooled
frequencies the encoder merged from every client's counts, exact; numeric columns:
the mass per bin of the encoder's merged mixture, the federated estimate of the real
distribution), then the Pearson correlation matrices of the numeric columns side by
side (real: merged exactly from the clients' sums of products). No real row is needed,
so the picture can be drawn wherever the model is, the server included.
"""

from __future__ import annotations

import math
import textwrap

import numpy as np
import pandas as pd
from PIL import Image, ImageDraw

from fedgen.data.table_encoder import CategoricalEncoding, ContinuousEncoding, TableEncoder

PANEL_W, PANEL_H, PER_ROW, BINS, MAX_CATEGORIES = 240, 140, 4, 24, 12
#: Pixels above a heat map for its title; pixels a line of PIL's default font takes
#: (height) and a character (width, roughly), for laying out the column-order legend.
HEAT_TITLE, LINE_H, CHAR_W = 14, 12, 6
REAL, SYNTHETIC, INK = (150, 150, 150), (40, 90, 200), (20, 20, 20)


def _normal_cdf(x: np.ndarray) -> np.ndarray:
    return 0.5 * (1 + np.vectorize(math.erf)(x / math.sqrt(2)))


def _numeric_bars(enc: ContinuousEncoding, values: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Per-bin shares over the column's merged range: real (mixture mass), synthetic."""
    edges = np.linspace(enc.minimum, enc.maximum + 1e-9, BINS + 1)
    cdf = (_normal_cdf((edges[:, None] - enc.means) / enc.stds) * enc.weights).sum(axis=1)
    real = np.diff(cdf)
    real = real / real.sum() if real.sum() > 0 else real
    synthetic = np.histogram(np.clip(values, edges[0], edges[-1]), bins=edges)[0].astype(float)
    return real, synthetic / max(synthetic.sum(), 1.0)


def _categorical_bars(
    enc: CategoricalEncoding, values: pd.Series
) -> tuple[np.ndarray, np.ndarray, list[str]]:
    order = np.argsort(-enc.counts)[:MAX_CATEGORIES]
    real = enc.counts[order] / enc.counts.sum()
    shares = values.astype(str).value_counts(normalize=True)
    names = [enc.categories[i] for i in order]
    return real, np.array([shares.get(c, 0.0) for c in names]), names


def _panel(draw: ImageDraw.ImageDraw, x0: int, y0: int, title: str, real, synthetic) -> None:
    draw.text((x0 + 6, y0 + 2), title, fill=INK)
    top, bottom, left, right = y0 + 16, y0 + PANEL_H - 8, x0 + 6, x0 + PANEL_W - 6
    draw.line([(left, bottom), (right, bottom)], fill=INK)
    peak = max(float(np.max(real, initial=0)), float(np.max(synthetic, initial=0)), 1e-12)
    slot = (right - left) / max(len(real), 1)
    for i, (r, s) in enumerate(zip(real, synthetic, strict=True)):
        xa = left + i * slot
        half = max(slot / 2 - 1, 1)
        draw.rectangle([xa, bottom - (bottom - top) * r / peak, xa + half, bottom], fill=REAL)
        draw.rectangle(
            [xa + half, bottom - (bottom - top) * s / peak, xa + 2 * half, bottom], fill=SYNTHETIC
        )


def _heat_cell(k: int) -> int:
    """Side of one correlation cell for ``k`` numeric columns: 8 to 40 pixels."""
    return max(min(160 // max(k, 1), 40), 8)


def _heatmap(draw: ImageDraw.ImageDraw, x0: int, y0: int, title: str, corr: np.ndarray) -> None:
    draw.text((x0, y0), title, fill=INK)
    k = len(corr)
    cell = _heat_cell(k)
    for i in range(k):
        for j in range(k):
            v = float(np.clip(corr[i, j], -1, 1))
            # Red for positive, blue for negative, white at 0.
            shade = int(255 * (1 - abs(v)))
            color = (255, shade, shade) if v >= 0 else (shade, shade, 255)
            xa, ya = x0 + j * cell, y0 + HEAT_TITLE + i * cell
            draw.rectangle([xa, ya, xa + cell - 1, ya + cell - 1], fill=color, outline=INK)


def draw_table_figure(encoder: TableEncoder, synthetic: pd.DataFrame) -> Image.Image:
    """The figure of the module docstring for ``synthetic`` rows of ``encoder``'s table."""
    n = len(encoder.encodings)
    rows = -(-n // PER_ROW)
    numeric = [e.name for e in encoder.encodings if isinstance(e, ContinuousEncoding)]
    with_heat = encoder.correlation is not None and len(numeric) > 1
    # The two heat maps side by side, then the column order, wrapped to the room left;
    # the band and, for many numeric columns, the image grow to hold them all.
    side = len(numeric) * _heat_cell(len(numeric)) if with_heat else 0
    legend_x = 6 + 2 * (side + 40)
    width = max(PANEL_W * PER_ROW, legend_x + 40 * CHAR_W)
    legend = textwrap.wrap(f"order: {', '.join(numeric)}", (width - legend_x) // CHAR_W)
    heat = 4 + HEAT_TITLE + max(side, len(legend) * LINE_H) + 8 if with_heat else 0
    image = Image.new("RGB", (width, 24 + rows * PANEL_H + heat), "white")
    draw = ImageDraw.Draw(image)
    draw.text(
        (6, 6),
        "grey: real (statistics merged from the clients)   blue: synthetic "
        f"({len(synthetic)} rows)",
        fill=INK,
    )
    for k, enc in enumerate(encoder.encodings):
        x0, y0 = (k % PER_ROW) * PANEL_W, 24 + (k // PER_ROW) * PANEL_H
        if isinstance(enc, ContinuousEncoding):
            real, synth = _numeric_bars(enc, synthetic[enc.name].to_numpy(dtype=np.float64))
            title = f"{enc.name} [{enc.minimum:.3g}, {enc.maximum:.3g}]"
        else:
            real, synth, _ = _categorical_bars(enc, synthetic[enc.name])
            title = f"{enc.name} ({len(enc.categories)} categories)"
        _panel(draw, x0, y0, title, real, synth)
    if with_heat and encoder.correlation is not None:
        y0 = 24 + rows * PANEL_H + 4
        synth_corr = np.nan_to_num(synthetic[numeric].astype(float).corr().to_numpy())
        _heatmap(draw, 6, y0, "real correlations (merged)", encoder.correlation)
        _heatmap(draw, 6 + side + 40, y0, "synthetic correlations", synth_corr)
        for i, line in enumerate(legend):
            draw.text((legend_x, y0 + HEAT_TITLE + i * LINE_H), line, fill=INK)
    return image
