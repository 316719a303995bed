"""Sample grids: exact pixel layout, value handling, and a grid of real images."""

from __future__ import annotations

import gzip
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from fedgen.images.grid import class_grid_labels, make_grid_image, save_grid

FASHION = Path("/usr/share/datasets/fashion-mnist")


def constant_images(values: list[float], channels: int = 1, height: int = 4, width: int = 5):
    """One (channels, height, width) image per value, every pixel equal to it."""
    return torch.tensor(values).view(-1, 1, 1, 1).expand(-1, channels, height, width).clone()


def test_two_by_three_grid_has_exact_size_and_tile_colours():
    # Prepare: 6 constant 4x5 tiles, values 0.0, 0.2, ..., 1.0
    values = [0.0, 0.2, 0.4, 0.6, 0.8, 1.0]
    images = constant_images(values)

    # Execute
    grid = np.asarray(make_grid_image(images, nrow=3, padding=2, scale=2))

    # Assert: width (3*(5+2)+2)*2 = 46, height (2*(4+2)+2)*2 = 28
    assert grid.shape == (28, 46)
    assert grid[0, 0] == 128  # padding is mid-grey
    for index, value in enumerate(values):
        row, col = divmod(index, 3)
        top, left = (2 + row * 6) * 2, (2 + col * 7) * 2
        tile = grid[top : top + 8, left : left + 10]
        assert (tile == round(value * 255)).all(), f"tile {index}"
        assert grid[top - 1, left] == 128 and grid[top, left - 1] == 128


def test_rgb_grid_keeps_colours_and_fills_the_last_row_with_padding():
    red = torch.zeros(3, 2, 2)
    red[0] = 1.0
    blue = torch.zeros(3, 2, 2)
    blue[2] = 1.0
    images = torch.stack([red, blue, red])

    grid = make_grid_image(images, nrow=2, padding=1, scale=1)
    pixels = np.asarray(grid)

    assert grid.mode == "RGB"
    assert pixels.shape == (7, 7, 3)  # 2 rows x 2 columns of (2+1) plus 1
    assert tuple(pixels[1, 1]) == (255, 0, 0)
    assert tuple(pixels[1, 4]) == (0, 0, 255)
    assert tuple(pixels[4, 1]) == (255, 0, 0)
    assert tuple(pixels[4, 4]) == (128, 128, 128)  # empty slot after 3 images


def test_values_are_clamped_nan_becomes_black_and_uint8_is_accepted():
    floats = torch.tensor([-3.0, 7.0, float("nan")]).view(3, 1, 1, 1)
    as_bytes = torch.tensor([0, 100, 255], dtype=torch.uint8).view(3, 1, 1, 1)

    clamped = np.asarray(make_grid_image(floats, nrow=3, padding=0, scale=1))
    from_bytes = np.asarray(make_grid_image(as_bytes, nrow=3, padding=0, scale=1))

    assert clamped.tolist() == [[0, 255, 0]]
    assert from_bytes.tolist() == [[0, 100, 255]]


@pytest.mark.parametrize(
    "shape, nrow",
    [((4, 28, 28), 2), ((4, 2, 28, 28), 2), ((0, 1, 28, 28), 2), ((4, 1, 28, 28), 0)],
)
def test_unusable_input_raises_value_error(shape, nrow):
    with pytest.raises(ValueError, match="make_grid_image needs"):
        make_grid_image(torch.zeros(shape), nrow=nrow)


def test_class_grid_labels_gives_one_class_per_row():
    labels = class_grid_labels(num_classes=3, per_class=2)

    assert labels.dtype == torch.int64
    assert labels.tolist() == [0, 0, 1, 1, 2, 2]
    with pytest.raises(ValueError, match="per_class >= 1"):
        class_grid_labels(3, 0)


def load_fashion_by_class(per_class: int) -> torch.Tensor:
    """The first ``per_class`` Fashion-MNIST test images of each class, class-major order."""
    with gzip.open(FASHION / "t10k-images-idx3-ubyte.gz") as handle:
        images = np.frombuffer(handle.read(), dtype=np.uint8, offset=16).reshape(-1, 28, 28)
    with gzip.open(FASHION / "t10k-labels-idx1-ubyte.gz") as handle:
        labels = np.frombuffer(handle.read(), dtype=np.uint8, offset=8)
    index = np.concatenate([np.flatnonzero(labels == c)[:per_class] for c in range(10)])
    return torch.from_numpy(images[index].copy()).unsqueeze(1).float().div(255.0)


@pytest.mark.skipif(
    not (FASHION / "t10k-images-idx3-ubyte.gz").exists(), reason="Fashion-MNIST not on disk"
)
def test_saved_grid_of_real_images_round_trips_pixel_exact(tmp_path):
    images = load_fashion_by_class(per_class=4)  # (40, 1, 28, 28), one class per row

    path = save_grid(images, tmp_path / "samples" / "round_0001.png", nrow=4)

    with Image.open(path) as saved:
        assert saved.format == "PNG"
        assert saved.size == ((4 * 30 + 2) * 2, (10 * 30 + 2) * 2)
        pixels = np.asarray(saved)
    # Tile (row 7, column 2) is the third image of class 7, upscaled 2x.
    top, left = (2 + 7 * 30) * 2, (2 + 2 * 30) * 2
    expected = (images[7 * 4 + 2, 0] * 255).round().to(torch.uint8).numpy()
    assert (pixels[top : top + 56 : 2, left : left + 56 : 2] == expected).all()
    assert not list(tmp_path.glob("samples/*.partial"))
