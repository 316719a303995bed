"""Train on synthetic, test on real (TSTR).

Esteban, Hyland, Ratsch, "Real-valued (Medical) Time Series Generation with
Recurrent Conditional GANs", 2017, proposed the protocol; the classifier and the
metric set (accuracy, macro precision, recall, F1, false-positive rate) follow
HuSCF-GAN (Shi et al. 2024). A fresh ``SmallCNN`` sees only generated images and
is scored on the real test split, so a high score needs images that are both
realistic and of the requested class.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass

import torch

from fedgen.eval.classifier import EpochCallback, predict_labels, train_classifier

TSTR_EPOCHS = 3


@dataclass(frozen=True)
class TstrResult:
    """Scores on the real test split of a classifier trained on synthetic images only.

    Precision, recall, F1 and false-positive rate are macro averages over classes.
    """

    accuracy: float
    precision: float
    recall: float
    f1: float
    fpr: float

    def as_dict(self, prefix: str = "tstr_") -> dict[str, float]:
        """The scores keyed ``prefix + name``, e.g. ``tstr_accuracy``."""
        return {prefix + key: value for key, value in asdict(self).items()}


def confusion_matrix(true: torch.Tensor, pred: torch.Tensor, num_classes: int) -> torch.Tensor:
    """Counts ``(C, C)``, int64: row = true class, column = predicted class.

    Raises:
        ValueError: shapes differ or a label lies outside ``[0, num_classes)``.
    """
    if true.shape != pred.shape or true.dim() != 1:
        raise ValueError(
            f"true and pred must be 1-D of equal length, got {tuple(true.shape)} "
            f"and {tuple(pred.shape)}"
        )
    for name, labels in (("true", true), ("pred", pred)):
        if labels.numel() and (labels.min() < 0 or labels.max() >= num_classes):
            raise ValueError(
                f"{name} labels must lie in [0, {num_classes}), got range "
                f"[{int(labels.min())}, {int(labels.max())}]; check num_classes"
            )
    flat = true.long() * num_classes + pred.long()
    return torch.bincount(flat, minlength=num_classes * num_classes).view(num_classes, num_classes)


def _safe_divide(numerator: torch.Tensor, denominator: torch.Tensor) -> torch.Tensor:
    """Element-wise ratio that is 0 where the denominator is 0 (sklearn's zero_division=0)."""
    positive = denominator > 0
    return torch.where(positive, numerator / torch.where(positive, denominator, 1.0), 0.0)


def classification_scores(confusion: torch.Tensor) -> TstrResult:
    """Accuracy and macro precision, recall, F1 and false-positive rate from a confusion matrix.

    F1 is averaged per class (as sklearn's ``average="macro"``), not the harmonic mean
    of the macro precision and recall. A class never predicted has precision 0.
    """
    counts = confusion.double()
    total = counts.sum()
    true_pos = counts.diagonal()  # (C,)
    predicted = counts.sum(dim=0)  # (C,) column sums: how often each class was predicted
    actual = counts.sum(dim=1)  # (C,) row sums: how often each class occurs
    false_pos = predicted - true_pos
    true_neg = total - actual - false_pos
    precision = _safe_divide(true_pos, predicted)
    recall = _safe_divide(true_pos, actual)
    f1 = _safe_divide(2 * precision * recall, precision + recall)
    fpr = _safe_divide(false_pos, false_pos + true_neg)
    return TstrResult(
        accuracy=float(true_pos.sum() / total),
        precision=float(precision.mean()),
        recall=float(recall.mean()),
        f1=float(f1.mean()),
        fpr=float(fpr.mean()),
    )


def train_synthetic_test_real(
    synth_images: torch.Tensor,
    synth_labels: torch.Tensor,
    test_images: torch.Tensor,
    test_labels: torch.Tensor,
    num_classes: int,
    epochs: int = TSTR_EPOCHS,
    batch_size: int = 64,
    seed: int = 0,
    callback: EpochCallback | None = None,
    schedule: str = "cosine",
) -> TstrResult:
    """Train a fresh ``SmallCNN`` on the synthetic images and score it on the real ones.

    Images are float ``(N, 1, 28, 28)`` in [0, 1]; labels int64 ``(N,)``.

    Raises:
        ValueError: on shapes, dtypes or labels out of range.
    """
    if test_labels.shape != (test_images.shape[0],) or test_images.shape[0] == 0:
        raise ValueError(
            f"{test_images.shape[0]} test images but test labels of shape "
            f"{tuple(test_labels.shape)}; pass one label per real test image"
        )
    model = train_classifier(
        synth_images,
        synth_labels,
        num_classes,
        epochs=epochs,
        batch_size=batch_size,
        seed=seed,
        callback=callback,
        schedule=schedule,
    )
    predictions = predict_labels(model, test_images.float())
    return classification_scores(confusion_matrix(test_labels, predictions, num_classes))
