"""The partition as a picture: one row per client, one column per class, counts in cells.

Image data sets write ``counts`` (and ``domain_counts`` for multi-domain runs) to
``partition.json``; table data sets write each client's counts of the target
column's categories. Text is split by themes, not classes, and gets no picture.
"""

from __future__ import annotations

import html
import math
from typing import Any, TypeGuard

from fedgen.report.heat_picture import heat_picture
from fedgen.report.svg import format_number, heatmap

Matrix = list[list[float]]
#: Beyond this many clients the picture drops the numbers in its cells (heat_picture).
MAX_LABELLED_ROWS = 50


def partition_maps(partition: dict[str, Any]) -> list[tuple[str, Matrix, list[str]]] | None:
    """(title, client x column counts, column names) per picture; None when the partition
    records no counts per class (text, or a file from elsewhere)."""
    counts = partition.get("counts")
    if isinstance(counts, list) and counts:
        names = partition.get("class_names")
        columns = (
            [str(n) for n in names]
            if isinstance(names, list) and names
            else [f"class {j}" for j in range(len(numbers(counts[0])))]
        )
        maps = [("labels per client", [numbers(row) for row in counts], columns)]
        domain_counts = partition.get("domain_counts")
        if isinstance(domain_counts, list) and domain_counts:
            domain_names = [str(n) for n in partition.get("domain_names") or []] or [
                f"domain {j}" for j in range(len(numbers(domain_counts[0])))
            ]
            maps.append(("domains per client", [numbers(r) for r in domain_counts], domain_names))
        return maps
    return _table_map(partition)


def _table_map(partition: dict[str, Any]) -> list[tuple[str, Matrix, list[str]]] | None:
    target, clients = partition.get("target"), partition.get("clients")
    if partition.get("modality") != "tables" or not isinstance(clients, list) or not target:
        return None
    per_client = [c.get(target) if isinstance(c, dict) else None for c in clients]
    if not all(isinstance(c, dict) for c in per_client):
        return None
    columns = sorted({str(k) for c in per_client for k in c})  # type: ignore[union-attr]
    matrix = [
        [float(c.get(k, 0)) if _is_number(c.get(k, 0)) else math.nan for k in columns]  # type: ignore[union-attr]
        for c in per_client
    ]
    return [(f"rows per client by {target}", matrix, columns)]


def partition_section(
    partition: dict[str, Any] | None, problems: list[str], attackers: set[int] | None = None
) -> str:
    """The "Partition" section; problems with the file are appended to ``problems``."""
    if partition is None:
        return ""
    if partition.get("withheld"):
        withheld = html.escape(str(partition["withheld"]))
        return f'<h2>Partition</h2><p class="muted">Withheld: {withheld}.</p>'
    maps = partition_maps(partition)
    if maps is None:
        if partition.get("modality") in ("text", "tables"):
            return ""  # no classes to picture; the sizes are in partition.json
        problems.append("partition.json has no 'counts'; the heat-map is not shown")
        return ""
    rows = len(maps[0][1])
    sizes = numbers(partition.get("sizes"))
    if len(sizes) != rows or not all(math.isfinite(size) for size in sizes):
        sizes = [math.fsum(v for v in row if math.isfinite(v)) for row in maps[0][1]]
    row_labels = [
        f"client {i} (n={format_number(size)})" + (" attacker" if i in (attackers or ()) else "")
        for i, size in enumerate(sizes)
    ]
    parts = [
        "<h2>Partition</h2>",
        f'<p class="muted">{rows} clients; client sizes from '
        f"{format_number(min(sizes))} to {format_number(max(sizes))} examples. "
        "Darker cells hold more examples.</p>",
    ]
    if rows > MAX_LABELLED_ROWS and attackers:
        parts.append(
            f'<p class="muted">Attackers: clients {", ".join(map(str, sorted(attackers)))}.</p>'
        )
    for title, matrix, columns in maps:
        try:
            if rows > MAX_LABELLED_ROWS:
                chart = heat_picture(matrix, columns, title)
            else:
                chart = heatmap(matrix, row_labels, columns, title)
        except ValueError as error:
            problems.append(f"partition.json: {title} not shown ({error})")
            continue
        parts.append(f'<div class="heat">{chart}</div>')
    return "".join(parts)


def numbers(row: Any) -> list[float]:
    """A row of counts as floats; anything that is not a number becomes NaN (a grey cell)."""
    if not isinstance(row, list):
        return []
    return [float(v) if _is_number(v) else math.nan for v in row]


def _is_number(value: Any) -> TypeGuard[int | float]:
    return isinstance(value, int | float) and not isinstance(value, bool)
