"""The many-client partition picture: one band per client, same colour scale."""

from __future__ import annotations

import base64
import io
import math
import re

import pytest
from PIL import Image

from fedgen.report.heat_picture import CELL_W, DARK, LIGHT, MISSING, heat_picture


def test_each_client_is_a_band_coloured_by_its_share_of_the_largest_cell():
    # Prepare: 100 clients; client 0 holds the peak, client 1 nothing, client 2 a gap.
    matrix = [[10.0, 0.0] for _ in range(100)]
    matrix[1] = [0.0, 0.0]
    matrix[2] = [math.nan, 10.0]

    # Execute
    svg = heat_picture(matrix, ["a", "b"], "labels per client")

    # Assert
    uri = re.search(r'href="data:image/png;base64,([^"]+)"', svg).group(1)
    with Image.open(io.BytesIO(base64.b64decode(uri))) as png:
        band = 6  # 600 pixels / 100 clients
        assert png.size == (2 * CELL_W, 100 * band)
        assert png.getpixel((0, 0)) == DARK and png.getpixel((CELL_W, 0)) == LIGHT
        assert png.getpixel((0, band)) == LIGHT
        assert png.getpixel((0, 2 * band)) == MISSING
    assert "client 0" in svg and "client 99" in svg


def test_rows_must_match_the_column_labels():
    with pytest.raises(ValueError, match="one per column label"):
        heat_picture([[1.0, 2.0]], ["only one"], "t")
