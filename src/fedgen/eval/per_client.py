"""Generation quality on one client's own label distribution, and its summary over clients.

A federation serves each client with the model it ends with (the global one, or the
client's personal one); what matters to a client is how well that model generates
*its* data. For client k with label proportions ``p_k`` (its training shard's):

- **per-client TSTR**: a fresh ``SmallCNN`` trained on ``n`` samples whose labels follow
  ``p_k``, scored on real test images of the client's classes (up to ``TEST_PER_CLASS``
  each and no more than ``n``, a fixed draw) with each class's recall weighted by ``p_k``
  (``sum_c p_k[c] * recall_c``): its expected accuracy on test data drawn as the
  client's own;
- **per-client Frechet distance**: ``n`` samples with labels following ``p_k`` against
  as many real test images drawn with the same class counts (fixed by the seed), on the
  feature classifier's features (not FID: no Inception weights).

Over clients: the mean, and the worst decile, the 10th percentile of TSTR (low is bad)
and the 90th of the Frechet distance (high is bad), as text tasks report perplexity.
"""

from __future__ import annotations

from collections.abc import Callable

import numpy as np
import torch

from fedgen.eval.classifier import predict_labels, train_classifier
from fedgen.eval.frechet import frechet_distance
from fedgen.eval.tstr import confusion_matrix
from fedgen.seeding import derive_seed, torch_generator

Generate = Callable[[torch.Tensor], torch.Tensor]

#: Most real test images per class that per-client TSTR classifies.
TEST_PER_CLASS = 500

#: Figures computed per client, and whether larger is better.
CLIENT_FIGURES = {"tstr_accuracy": True, "frechet_distance": False}


def label_proportions(labels: torch.Tensor, num_classes: int) -> torch.Tensor:
    """The share of each class among ``labels``, float64 ``(num_classes,)``.

    Raises:
        ValueError: no labels.
    """
    if labels.numel() == 0:
        raise ValueError("a client without examples has no label distribution to evaluate on")
    counts = torch.bincount(labels.long(), minlength=num_classes).double()
    return counts / counts.sum()


def class_counts(n: int, proportions: torch.Tensor) -> torch.Tensor:
    """``n`` split over classes by ``proportions`` (largest remainders), int64, sums to ``n``."""
    exact = proportions.double() * n
    counts = exact.floor().long()
    short = n - int(counts.sum())
    if short:
        # The classes with the largest fractional parts get one more (ties: lower class).
        order = torch.argsort(exact - counts, descending=True, stable=True)
        counts[order[:short]] += 1
    return counts


class ClientQuality:
    """Per-client TSTR and Frechet distance of generators against one real test split.

    Args:
        test_images: float ``(N, 1, 28, 28)`` in [0, 1]; ``test_labels`` int64 ``(N,)``.
        features: the feature extractor (``FeatureClassifier.features``).
        samples: generated images per client and figure (and real ones for Frechet).
        epochs: TSTR classifier epochs.
    """

    def __init__(
        self,
        test_images: torch.Tensor,
        test_labels: torch.Tensor,
        num_classes: int,
        features: Callable[[torch.Tensor], torch.Tensor],
        *,
        samples: int,
        epochs: int,
        seed: int,
    ) -> None:
        if samples < 2:
            raise ValueError(f"per-client evaluation needs >= 2 samples per client, got {samples}")
        self.test_images = test_images
        self.test_labels = test_labels
        self.num_classes = num_classes
        self.features = features
        self.samples = samples
        self.epochs = epochs
        self.seed = seed
        self._by_class = [torch.nonzero(test_labels == c).flatten() for c in range(num_classes)]
        # TSTR scores each class on at most TEST_PER_CLASS of its test images, and no more
        # than the samples drawn (a fixed draw): per-class recall to within a few points,
        # at a fraction of the cost of classifying the whole split per client and model.
        per_class = min(TEST_PER_CLASS, samples)
        gen = torch_generator(seed, "tstr-rows")
        self._tstr_rows = [
            rows[torch.randperm(len(rows), generator=gen)[:per_class]] for rows in self._by_class
        ]

    def labels_for(self, proportions: torch.Tensor, client_id: int) -> torch.Tensor:
        """``samples`` labels following ``proportions``, shuffled by the client's seed."""
        counts = class_counts(self.samples, proportions)
        labels = torch.repeat_interleave(torch.arange(self.num_classes), counts)
        order = torch.randperm(
            len(labels), generator=torch_generator(self.seed, "labels", client_id)
        )
        return labels[order]

    def real_images_for(self, proportions: torch.Tensor, client_id: int) -> torch.Tensor:
        """Real test images with the class counts of ``labels_for`` (drawn by the seed;
        with replacement only where the test split holds fewer of a class)."""
        counts = class_counts(self.samples, proportions)
        gen = torch_generator(self.seed, "real", client_id)
        rows = []
        for c, k in enumerate(counts.tolist()):
            pool = self._by_class[c]
            if k == 0:
                continue
            if len(pool) == 0:
                raise ValueError(f"the test split holds no image of class {c}")
            rows.append(pool[draw_indices(len(pool), k, gen)])
        return self.test_images[torch.cat(rows)]

    def figures(
        self, images: torch.Tensor, labels: torch.Tensor, proportions: torch.Tensor, client_id: int
    ) -> dict[str, float]:
        """TSTR accuracy and Frechet distance of generated ``images`` (drawn for
        ``labels_for(proportions, client_id)``) on the client's label distribution."""
        model = train_classifier(
            images,
            labels,
            self.num_classes,
            epochs=self.epochs,
            seed=derive_seed(self.seed, "tstr", client_id),
        )
        # Only the client's classes weigh in its accuracy: only theirs are classified.
        rows = torch.cat([self._tstr_rows[c] for c in torch.nonzero(proportions > 0).flatten()])
        confusion = confusion_matrix(
            self.test_labels[rows], predict_labels(model, self.test_images[rows]), self.num_classes
        ).double()
        recall = confusion.diagonal() / confusion.sum(dim=1).clamp(min=1)
        real = self.features(self.real_images_for(proportions, client_id))
        return {
            "tstr_accuracy": float((proportions.double() * recall).sum()),
            "frechet_distance": frechet_distance(real, self.features(images)),
        }


def draw_indices(pool_size: int, k: int, generator: torch.Generator) -> torch.Tensor:
    """``k`` indices into a pool of ``pool_size``: without replacement, with it only when
    the pool holds fewer than ``k``."""
    if k <= pool_size:
        return torch.randperm(pool_size, generator=generator)[:k]
    return torch.randint(pool_size, (k,), generator=generator)


def real_images_for_labels(
    pool: list[torch.Tensor], labels: torch.Tensor, generator: torch.Generator
) -> torch.Tensor:
    """Real images for ``labels`` (float in [0, 1], in ``labels``' order), each class's
    drawn from ``pool[class]`` (uint8 images) by ``draw_indices``: the per-client ceiling's
    stand-in for a perfect generator's samples."""
    out = torch.empty((len(labels), *pool[0].shape[1:]), dtype=torch.float32)
    for c in torch.unique(labels).tolist():
        where = torch.nonzero(labels == c).flatten()
        images = pool[c]
        if len(images) == 0:
            raise ValueError(
                f"no client holds an image of class {c}, so the per-client ceiling cannot "
                "be drawn for it"
            )
        out[where] = images[draw_indices(len(images), len(where), generator)].float() / 255.0
    return out


def summarise(model: str, per_client: dict[int, dict[str, float]]) -> dict[str, float]:
    """Mean and worst decile over clients of each figure, keyed
    ``client_<figure>_<model>`` and ``client_<figure>_<model>_worst_decile``."""
    out: dict[str, float] = {}
    for figure, higher_is_better in CLIENT_FIGURES.items():
        values = np.array([f[figure] for f in per_client.values()], dtype=np.float64)
        if values.size == 0:
            continue
        key = f"client_{figure}_{model}"
        out[key] = float(values.mean())
        out[f"{key}_worst_decile"] = float(np.quantile(values, 0.1 if higher_is_better else 0.9))
    return out
