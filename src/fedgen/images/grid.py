"""Sample grids: many small images tiled into one PNG, one row per class.

The layout matches ``torchvision.utils.make_grid`` (a ``padding``-pixel border
around and between tiles, row-major order) so grids look familiar, but it is
written here because fedgen does not depend on torchvision.
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

import numpy as np
import torch
from PIL import Image

from fedgen.registry import SAMPLE_WRITERS


@SAMPLE_WRITERS.register("images")
def write_class_grid(task: Any, path: Path, per_class: int, generator: torch.Generator) -> Path:
    """``path``.png: ``per_class`` samples of every class from ``task``, one row per class;
    for a task with a ``denoising_strip`` (diffusion), ``path``_denoising.png too."""
    labels = class_grid_labels(task.num_classes, per_class)
    images = task.sample(labels, generator)
    written = save_grid(images, path.with_suffix(".png"), nrow=per_class)
    # A diffusion task also shows how its samples come out of the noise, beside the grid.
    strip = getattr(task, "denoising_strip", None)
    if strip is not None:
        frames, nrow = strip(generator)
        save_grid(frames, path.with_name(path.with_suffix("").name + "_denoising.png"), nrow=nrow)
    return written


def class_grid_labels(num_classes: int, per_class: int) -> torch.Tensor:
    """Labels ``[0]*per_class + [1]*per_class + ...`` as ``int64``, one per grid tile.

    The result has shape ``(num_classes * per_class,)``. Sampling with these labels and
    tiling with ``nrow=per_class`` puts one class per grid row.
    """
    if num_classes < 1 or per_class < 1:
        raise ValueError(
            f"class_grid_labels needs num_classes >= 1 and per_class >= 1, "
            f"got {num_classes} and {per_class}"
        )
    return torch.arange(num_classes, dtype=torch.int64).repeat_interleave(per_class)


def make_grid_image(
    images: torch.Tensor,
    nrow: int,
    padding: int = 2,
    scale: int = 2,
    pad_value: float = 0.5,
) -> Image.Image:
    """Tile ``images`` row-major, ``nrow`` per row, into one PIL image.

    Args:
        images: ``(N, 1, H, W)`` or ``(N, 3, H, W)``; float in [0, 1] (values outside are
            clamped, NaN becomes 0) or ``uint8`` in [0, 255].
        nrow: images per grid row; the last row is filled with ``pad_value`` if N is not a
            multiple of it.
        padding: pixels of ``pad_value`` around and between tiles, before scaling.
        scale: integer nearest-neighbour upscaling of the whole grid, so 28x28 tiles stay sharp.
        pad_value: grey level of the padding in [0, 1]; mid-grey separates both dark and
            light tiles.

    Returns:
        A mode ``"L"`` (1 channel) or ``"RGB"`` (3 channels) image of width
        ``(nrow*(W+padding)+padding)*scale`` and height ``(rows*(H+padding)+padding)*scale``
        with ``rows = ceil(N/nrow)``.

    Raises:
        ValueError: if the shape, ``nrow``, ``padding`` or ``scale`` is not usable.
    """
    if images.dim() != 4 or images.shape[1] not in (1, 3) or images.shape[0] == 0:
        raise ValueError(
            f"make_grid_image needs images of shape (N, 1, H, W) or (N, 3, H, W) with N >= 1, "
            f"got {tuple(images.shape)}; add a channel axis with images.unsqueeze(1)"
        )
    if nrow < 1 or padding < 0 or scale < 1:
        raise ValueError(
            f"make_grid_image needs nrow >= 1, padding >= 0 and scale >= 1, "
            f"got nrow={nrow}, padding={padding}, scale={scale}"
        )
    if images.dtype == torch.uint8:
        pixels = images.detach().cpu().float().div(255.0)
    else:
        pixels = torch.nan_to_num(images.detach().cpu().float(), nan=0.0).clamp(0.0, 1.0)

    count, channels, height, width = pixels.shape
    rows = math.ceil(count / nrow)
    step_y, step_x = height + padding, width + padding
    canvas = torch.full(
        (channels, rows * step_y + padding, nrow * step_x + padding),
        float(min(max(pad_value, 0.0), 1.0)),
    )
    for index in range(count):
        top = padding + (index // nrow) * step_y
        left = padding + (index % nrow) * step_x
        canvas[:, top : top + height, left : left + width] = pixels[index]

    # Round rather than truncate so 0.5 maps to 128, as PIL and torchvision do.
    array = canvas.mul(255.0).round().to(torch.uint8).permute(1, 2, 0).numpy()
    if scale > 1:
        array = np.repeat(np.repeat(array, scale, axis=0), scale, axis=1)
    if channels == 1:
        return Image.fromarray(np.ascontiguousarray(array[:, :, 0]))  # uint8 2-D -> mode "L"
    return Image.fromarray(np.ascontiguousarray(array))  # uint8 (H, W, 3) -> mode "RGB"


def save_grid(
    images: torch.Tensor,
    path: Path,
    nrow: int,
    padding: int = 2,
    scale: int = 2,
) -> Path:
    """Write ``make_grid_image(images, nrow, padding, scale)`` to ``path`` as PNG.

    Parent folders are created. Returns ``path``.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    image = make_grid_image(images, nrow=nrow, padding=padding, scale=scale)
    # Write beside and rename, so a run stopped mid-write never leaves a truncated PNG
    # for the report to trip over.
    partial = path.with_name(path.name + ".partial")
    image.save(partial, format="PNG")
    partial.replace(path)
    return path
