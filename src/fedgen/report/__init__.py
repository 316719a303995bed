"""What a person looks at after a run: sample grids, SVG charts and the HTML run report."""

from fedgen.images.grid import class_grid_labels, make_grid_image, save_grid
from fedgen.report.html import write_report
from fedgen.report.svg import format_number, heatmap, line_chart

__all__ = [
    "class_grid_labels",
    "format_number",
    "heatmap",
    "line_chart",
    "make_grid_image",
    "save_grid",
    "write_report",
]
