"""Distance to the closest synthetic sample, against a slow per-image loop."""

from __future__ import annotations

import pytest
import torch

from fedgen.attacks.gan_leaks import distance_to_synthetic_scores
from fedgen.errors import ConfigError


class RecordingSampler:
    """Random images per call, remembered per class, as a seeded generator would give."""

    def __init__(self) -> None:
        self.gen = torch.Generator().manual_seed(0)
        self.drawn: dict[int, list[torch.Tensor]] = {}

    def __call__(self, labels: torch.Tensor) -> torch.Tensor:
        images = torch.rand(labels.shape[0], 1, 28, 28, generator=self.gen)
        for label, image in zip(labels.tolist(), images, strict=True):
            self.drawn.setdefault(label, []).append(image)
        return images


@pytest.mark.parametrize("embed", [None, lambda x: x[:, :, ::4, ::4] * 3])
def test_scores_are_minus_the_nearest_same_class_distance(embed):
    # Prepare
    gen = torch.Generator().manual_seed(1)
    images = torch.rand(9, 1, 28, 28, generator=gen)
    labels = torch.tensor([0, 1, 2, 0, 1, 2, 0, 1, 2])
    sampler = RecordingSampler()
    # Execute: 7 draws per class in chunks of 3 (3 + 3 + 1).
    scores = distance_to_synthetic_scores(
        sampler, images, labels, samples_per_class=7, embed=embed, chunk=3
    )
    # Assert
    f = embed or (lambda x: x)
    for i in range(9):
        bank = sampler.drawn[int(labels[i])]
        assert len(bank) == 7
        nearest = min(float((f(images[i : i + 1]) - f(s[None])).norm()) for s in bank)
        assert float(scores[i]) == pytest.approx(-nearest, rel=1e-5)


def test_a_sample_that_copies_a_candidate_scores_zero():
    images = torch.rand(2, 1, 28, 28, generator=torch.Generator().manual_seed(0))
    labels = torch.tensor([3, 4])
    scores = distance_to_synthetic_scores(lambda y: images[y - 3], images, labels, 1)
    torch.testing.assert_close(scores, torch.zeros(2))


def test_no_samples_is_a_clear_error():
    with pytest.raises(ConfigError, match="samples_per_class"):
        distance_to_synthetic_scores(torch.zeros_like, torch.zeros(1, 1, 28, 28), torch.zeros(1), 0)
