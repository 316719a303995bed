"""Full black-box membership inference by distance to the closest synthetic sample (GAN-Leaks).

Chen, Yu, Zhang & Fritz 2020, "GAN-Leaks: A Taxonomy of Membership Inference
Attacks against Generative Models" (CCS), full black-box setting: the attacker
can only draw samples. A generator that memorised its training images puts
samples close to them, so the score of a candidate is minus its distance to
the nearest of ``n`` generated samples of its own class. Distances are L2 in
pixel space by default (as the paper); pass ``embed`` to measure them in a
feature space instead (e.g. ``FeatureClassifier.features``).
"""

from __future__ import annotations

from collections.abc import Callable

import torch

from fedgen.errors import ConfigError

SampleFn = Callable[[torch.Tensor], torch.Tensor]
"""``labels (n,) -> images (n, C, H, W)`` in [0, 1]: the only access the attacker has."""


@torch.no_grad()
def distance_to_synthetic_scores(
    sample: SampleFn,
    images: torch.Tensor,
    labels: torch.Tensor,
    samples_per_class: int = 1000,
    embed: Callable[[torch.Tensor], torch.Tensor] | None = None,
    chunk: int = 500,
) -> torch.Tensor:
    """Scores ``-min_j ||e(x) - e(G(z_j, y))||_2`` over draws ``j`` of class ``y``, ``(N,)``.

    ``e`` is ``embed`` or flattening. Draws happen once per class present in
    ``labels``, in increasing class order, so a seeded ``sample`` is reproducible.
    """
    if samples_per_class < 1:
        raise ConfigError(f"samples_per_class must be >= 1, got {samples_per_class}")

    def features(x: torch.Tensor) -> torch.Tensor:
        return (embed(x) if embed is not None else x).flatten(1).double()

    scores = torch.empty(images.shape[0], dtype=torch.float64)
    for cls in torch.unique(labels).tolist():
        rows = torch.nonzero(labels == cls).squeeze(1)
        wanted = torch.full((samples_per_class,), int(cls), dtype=torch.int64)
        synthetic = torch.cat(
            [features(sample(wanted[i : i + chunk])) for i in range(0, samples_per_class, chunk)]
        )  # (n, d)
        nearest = torch.cdist(features(images[rows]), synthetic).min(dim=1).values  # (rows,)
        scores[rows] = -nearest
    return scores.float()
