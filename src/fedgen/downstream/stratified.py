"""A seeded subset of a test split with every class in it, as evenly as the split allows.

``downstream.test_examples`` scores quick runs on fewer test images. A plain random
subset of a few images misses classes, and a missing class reports a worst-class
accuracy of 0 for every arm (``accuracy.py``), whatever the classifier learnt.
"""

from __future__ import annotations

import torch

from fedgen.data.dataset import ImageDataset
from fedgen.downstream.errors import DownstreamError


def stratified_counts(available: list[int], n: int, order: list[int]) -> list[int]:
    """How many of each class to take: ``n`` in all, as equal as ``available`` allows.

    A class with fewer images than its share gives all it has and the rest is spread over
    the others; the last few that do not divide evenly go one each to the open classes
    in ``order`` (a seeded permutation of the classes, so no class is always favoured).
    """
    take = [0] * len(available)
    left = min(n, sum(available))
    while left > 0:
        open_classes = [c for c in order if take[c] < available[c]]
        share = left // len(open_classes)
        if share == 0:
            for c in open_classes[:left]:
                take[c] += 1
            break
        for c in open_classes:
            extra = min(share, available[c] - take[c])
            take[c] += extra
            left -= extra
    return take


def stratified_subset(data: ImageDataset, n: int, generator: torch.Generator) -> ImageDataset:
    """``n`` rows of ``data`` drawn per class (``stratified_counts``), in their original order.

    Raises ``DownstreamError`` if ``n`` is smaller than the number of classes (a class
    would be missing and its accuracy reported as 0).
    """
    if n < data.num_classes:
        raise DownstreamError(
            f"downstream.test_examples is {n} but the data has {data.num_classes} classes, "
            f"so a class would have no test image; set test_examples >= {data.num_classes} "
            "(or null for the whole test split)"
        )
    available = torch.bincount(data.labels, minlength=data.num_classes).tolist()
    order = torch.randperm(data.num_classes, generator=generator).tolist()
    counts = stratified_counts(available, n, order)
    rows = []
    for cls, k in enumerate(counts):
        of_class = torch.nonzero(data.labels == cls).squeeze(1)
        rows.append(of_class[torch.randperm(len(of_class), generator=generator)[:k]])
    return data.subset(torch.cat(rows).sort().values)
