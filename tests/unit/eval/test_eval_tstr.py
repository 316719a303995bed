"""TSTR: confusion-matrix metrics against scikit-learn, and the whole path on real data."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from sklearn.metrics import (
    accuracy_score,
    multilabel_confusion_matrix,
    precision_recall_fscore_support,
)
from sklearn.metrics import confusion_matrix as sk_confusion_matrix

from fedgen.data.dataset import ImageDataset
from fedgen.eval.classifier import SmallCNN, train_classifier
from fedgen.eval.tstr import (
    TstrResult,
    classification_scores,
    confusion_matrix,
    train_synthetic_test_real,
)

TSTR_TRAIN_SIZE = 5000


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_metrics_match_sklearn_on_random_predictions(seed: int) -> None:
    # Prepare: class 6 is never predicted in half the cases, to hit zero division.
    rng = np.random.default_rng(seed)
    true = rng.integers(0, 7, size=500)
    pred = np.where(rng.random(500) < 0.4, true, rng.integers(0, 7, size=500))
    if seed % 2 == 0:
        pred[pred == 6] = 5
    # Execute
    confusion = confusion_matrix(torch.from_numpy(true), torch.from_numpy(pred), 7)
    scores = classification_scores(confusion)
    # Assert
    labels = list(range(7))
    np.testing.assert_array_equal(confusion.numpy(), sk_confusion_matrix(true, pred, labels=labels))
    precision, recall, f1, _ = precision_recall_fscore_support(
        true, pred, labels=labels, average="macro", zero_division=0
    )
    per_class = multilabel_confusion_matrix(true, pred, labels=labels)  # (C, 2, 2): tn fp fn tp
    fpr = np.mean([fp / (fp + tn) for (tn, fp), _ in per_class])
    assert scores.accuracy == pytest.approx(accuracy_score(true, pred))
    assert scores.precision == pytest.approx(precision)
    assert scores.recall == pytest.approx(recall)
    assert scores.f1 == pytest.approx(f1)
    assert scores.fpr == pytest.approx(fpr)


def test_perfect_predictions() -> None:
    labels = torch.arange(30) % 3
    scores = classification_scores(confusion_matrix(labels, labels, 3))
    assert scores == TstrResult(accuracy=1.0, precision=1.0, recall=1.0, f1=1.0, fpr=0.0)


def test_as_dict_prefixes_every_field() -> None:
    result = TstrResult(accuracy=0.5, precision=0.4, recall=0.3, f1=0.2, fpr=0.1)
    assert result.as_dict() == {
        "tstr_accuracy": 0.5,
        "tstr_precision": 0.4,
        "tstr_recall": 0.3,
        "tstr_f1": 0.2,
        "tstr_fpr": 0.1,
    }
    assert set(result.as_dict(prefix="")) == {"accuracy", "precision", "recall", "f1", "fpr"}


def test_confusion_matrix_rejects_out_of_range_labels() -> None:
    with pytest.raises(ValueError, match="num_classes"):
        confusion_matrix(torch.tensor([0, 3]), torch.tensor([0, 1]), 3)


def test_training_is_deterministic_and_leaves_global_rng_alone(
    fashion_train: ImageDataset,
) -> None:
    images, labels = fashion_train.float_images()[:300], fashion_train.labels[:300]
    torch.manual_seed(123)
    before = torch.rand(1)
    torch.manual_seed(123)
    first = train_classifier(images, labels, 10, epochs=1, seed=7)
    after = torch.rand(1)
    second = train_classifier(images, labels, 10, epochs=1, seed=7)
    third = train_classifier(images, labels, 10, epochs=1, seed=8)
    assert torch.equal(before, after)
    for a, b in zip(first.state_dict().values(), second.state_dict().values(), strict=True):
        assert torch.equal(a, b)
    assert not torch.equal(first.head.weight, third.head.weight)
    assert isinstance(first, SmallCNN)
    assert first.features(images[:4]).shape == (4, 128)


def test_train_classifier_reports_each_epoch_and_checks_inputs(
    fashion_train: ImageDataset,
) -> None:
    seen: list[tuple[int, float]] = []
    images, labels = fashion_train.float_images()[:128], fashion_train.labels[:128]
    train_classifier(
        images, labels, 10, epochs=2, seed=0, callback=lambda e, x: seen.append((e, x))
    )
    assert [epoch for epoch, _ in seen] == [1, 2]
    assert all(np.isfinite(loss) for _, loss in seen)
    with pytest.raises(ValueError, match="float"):
        train_classifier(fashion_train.images[:8], labels[:8], 10, epochs=1)
    with pytest.raises(ValueError, match="num_classes"):
        train_classifier(images, labels, 5, epochs=1)


@pytest.mark.slow
def test_real_training_images_score_high_shuffled_labels_score_chance(
    fashion_train: ImageDataset, fashion_test: ImageDataset
) -> None:
    # Prepare: 5,000 real images stand in for a perfect generator.
    rows = torch.randperm(len(fashion_train), generator=torch.Generator().manual_seed(1))
    train = fashion_train.subset(rows[:TSTR_TRAIN_SIZE])
    shuffled = train.labels[torch.randperm(len(train), generator=torch.Generator().manual_seed(2))]
    test_images = fashion_test.float_images()
    # Execute
    real = train_synthetic_test_real(
        train.float_images(), train.labels, test_images, fashion_test.labels, 10, epochs=2
    )
    # One epoch is enough to show that shuffled labels teach nothing.
    noise = train_synthetic_test_real(
        train.float_images(), shuffled, test_images, fashion_test.labels, 10, epochs=1
    )
    # Assert
    assert real.accuracy > 0.75
    assert real.f1 > 0.7
    assert real.fpr < 0.03
    assert noise.accuracy < 0.2


@pytest.mark.parametrize("schedule", ["cosine", "constant"])
def test_the_classifiers_learning_rate_follows_its_schedule(monkeypatch, schedule) -> None:
    # Prepare: record the learning rate Adam steps with (64 tiny images, 4 steps)
    seen: list[float] = []
    real_step = torch.optim.Adam.step

    def step(self, *args, **kwargs):
        seen.append(self.param_groups[0]["lr"])
        return real_step(self, *args, **kwargs)

    monkeypatch.setattr(torch.optim.Adam, "step", step)
    images = torch.rand(64, 1, 28, 28, generator=torch.Generator().manual_seed(0))
    # Execute
    train_classifier(images, torch.arange(64) % 10, 10, epochs=2, batch_size=32, schedule=schedule)
    # Assert: constant keeps 1e-3 (the authors' Adam); cosine decays from it
    assert len(seen) == 4 and seen[0] == pytest.approx(1e-3)
    if schedule == "constant":
        assert seen == pytest.approx([1e-3] * 4)
    else:
        assert seen == sorted(seen, reverse=True) and seen[-1] < 0.2e-3


def test_an_unknown_schedule_is_refused() -> None:
    with pytest.raises(ValueError, match="choose one of cosine, constant"):
        train_classifier(torch.rand(4, 1, 28, 28), torch.arange(4), 10, 1, schedule="step")
