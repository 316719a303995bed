"""Test accuracy and worst-class accuracy of a classifier on a real test split."""

from __future__ import annotations

from dataclasses import dataclass

from fedgen.data.dataset import ImageDataset
from fedgen.eval.classifier import SmallCNN, predict_labels


@dataclass(frozen=True)
class ClassAccuracy:
    """Overall accuracy and each class's recall (accuracy on that class's test images)."""

    accuracy: float
    per_class: list[float]

    @property
    def worst_class(self) -> float:
        """The lowest per-class accuracy: what label skew hurts first."""
        return min(self.per_class)


def class_accuracy(model: SmallCNN, test: ImageDataset) -> ClassAccuracy:
    """Accuracy of ``model`` on ``test``, overall and per class (a class with no test
    image counts as 0, so a missing class cannot hide)."""
    predicted = predict_labels(model, test.float_images())
    correct = (predicted == test.labels).double()
    per_class = []
    for c in range(test.num_classes):
        mask = test.labels == c
        per_class.append(float(correct[mask].mean()) if bool(mask.any()) else 0.0)
    return ClassAccuracy(float(correct.mean()), per_class)


def as_figures(acc: ClassAccuracy) -> dict[str, float]:
    """Flat figures for JSON: ``accuracy``, ``worst_class_accuracy``."""
    return {"accuracy": acc.accuracy, "worst_class_accuracy": acc.worst_class}
