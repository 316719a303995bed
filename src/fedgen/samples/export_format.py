"""The layouts ``fedgen sample --format`` writes; apart from the writer so that the
command line can name them without loading torch."""

from __future__ import annotations

from enum import StrEnum


class ExportFormat(StrEnum):
    """How an exported image data set is laid out on disk."""

    PNG = "png"
    NPZ = "npz"
    FOLDER = "folder"
