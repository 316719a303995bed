"""Labelled synthetic images drawn from a class-conditional generator task."""

from __future__ import annotations

import torch

from fedgen.data.dataset import ImageDataset
from fedgen.tasks.base import Task

#: Samples drawn per call of ``Task.sample``: bounded memory, whatever the count asked.
CHUNK = 1000


@torch.no_grad()
def synthesize(
    task: Task, counts: list[int], class_names: tuple[str, ...], generator: torch.Generator
) -> ImageDataset:
    """``counts[c]`` images of every class ``c`` from the loaded ``task``, as a uint8
    ``ImageDataset`` (the form every client shard has), labels in class order."""
    labels = torch.cat(
        [torch.full((n,), c, dtype=torch.int64) for c, n in enumerate(counts) if n > 0]
        or [torch.empty(0, dtype=torch.int64)]
    )
    chunks = [task.sample(labels[i : i + CHUNK], generator) for i in range(0, len(labels), CHUNK)]
    shape = (0, *task.image_shape)
    images = torch.cat(chunks) if chunks else torch.empty(shape)
    # The generator's [0, 1] floats quantised as the real images are stored.
    pixels = images.clamp(0, 1).mul(255).round().to(torch.uint8)
    return ImageDataset(name="synthetic", images=pixels, labels=labels, class_names=class_names)


def balanced_counts(num_classes: int, per_class: int) -> list[int]:
    """``per_class`` of every class."""
    return [per_class] * num_classes
