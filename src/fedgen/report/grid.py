"""Sample grids now live in ``fedgen.images.grid`` (layer 3), where the engine may use them.

Re-exported here so ``from fedgen.report.grid import save_grid`` keeps working.
"""

from fedgen.images.grid import class_grid_labels, make_grid_image, save_grid

__all__ = ["class_grid_labels", "make_grid_image", "save_grid"]
