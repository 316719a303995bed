"""Generation quality: classifier-feature metrics (not FID/IS) and train-on-synthetic-test-on-real.

No Inception weights reach these machines, so every feature-based metric uses a
``SmallCNN`` trained on the real training split (see ``classifier.py``).
"""

from fedgen.eval.classifier import FeatureClassifier, SmallCNN, train_classifier
from fedgen.eval.evaluator import Evaluator
from fedgen.eval.frechet import frechet_distance
from fedgen.eval.inception_like import inception_like_score
from fedgen.eval.kid import kernel_distance
from fedgen.eval.precision_recall import precision_recall
from fedgen.eval.tstr import TstrResult, train_synthetic_test_real

__all__ = [
    "Evaluator",
    "FeatureClassifier",
    "SmallCNN",
    "TstrResult",
    "frechet_distance",
    "inception_like_score",
    "kernel_distance",
    "precision_recall",
    "train_classifier",
    "train_synthetic_test_real",
]
