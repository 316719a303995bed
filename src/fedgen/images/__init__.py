"""Images as a modality's output: sample grids (layer 3).

Pure tensor-to-PNG code with no fedgen imports, kept below the engine so the round
loop's callbacks can draw a grid per evaluation without importing the report layer;
``fedgen.report`` re-exports it for the run report.
"""

from fedgen.images.grid import class_grid_labels, make_grid_image, save_grid

__all__ = ["class_grid_labels", "make_grid_image", "save_grid"]
