"""Generation quality of a class-conditional image generator, measured against real data.

One ``Evaluator`` per real data set: it trains (or loads) the feature classifier
once, fixes the real comparison samples and the generated labels from its seed,
and turns any ``generate(labels) -> images`` callable into a flat dict of
metrics that a round loop can log.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch

from fedgen.config import EvalConfig
from fedgen.data.dataset import ImageDataset
from fedgen.eval.classifier import FEATURE_CLASSIFIER_EPOCHS, SCHEDULES, FeatureClassifier
from fedgen.eval.frechet import frechet_distance
from fedgen.eval.inception_like import inception_like_score
from fedgen.eval.kid import kernel_distance
from fedgen.eval.precision_recall import precision_recall
from fedgen.eval.repeats import mean_over_repeats
from fedgen.eval.tstr import TSTR_EPOCHS, train_synthetic_test_real
from fedgen.registry import EVALUATORS
from fedgen.seeding import derive_seed, torch_generator

Generate = Callable[[torch.Tensor], torch.Tensor]
"""``generate(labels)``: int64 labels ``(n,)`` -> float images ``(n, 1, 28, 28)`` in [0, 1]."""

GENERATE_CHUNK = 1000
"""Most labels passed to ``generate`` in one call, to bound the generator's memory."""

PRECISION_RECALL_K = 5
KID_SUBSETS = 100
KID_SUBSET_SIZE = 1000
INCEPTION_LIKE_SPLITS = 10
_RANGE_TOLERANCE = 1e-3

QUALITY_KEYS = (
    "frechet_distance",
    "kid",
    "kid_std",
    "inception_like_score",
    "inception_like_score_std",
    "precision",
    "recall",
)
TSTR_KEYS = ("tstr_accuracy", "tstr_precision", "tstr_recall", "tstr_f1", "tstr_fpr")


def balanced_labels(n: int, num_classes: int, generator: torch.Generator) -> torch.Tensor:
    """``n`` int64 labels, each class ``n // num_classes`` or one more times, in shuffled order."""
    labels = torch.arange(n, dtype=torch.int64) % num_classes
    return labels[torch.randperm(n, generator=generator)]


#: Seeds the measuring instrument: the feature classifier and the real images generated
#: ones are compared with. It is the same for every run of a data set, whatever the
#: run's seed, so that two seeds or two recipes are measured with one yardstick (as
#: FID's fixed Inception network and reference statistics are), KID's subsets included;
#: a run's seed draws only what it generates and the TSTR classifier it trains.
REFERENCE_SEED = 0


class Evaluator:
    """Scores a generator of one real data set with classifier-feature metrics and TSTR.

    Quality metrics (Frechet distance, KID, precision/recall, Inception-like score)
    compare ``num_quality_samples`` generated images, with labels balanced over the
    classes, to as many real test images (a fixed subset, the same for every run).
    Features and class probabilities come from a ``FeatureClassifier`` trained on
    ``train``; no Inception network is involved, so these are not FID/IS numbers.
    TSTR trains a fresh classifier on ``tstr_samples`` generated images and tests it
    on the whole real test split.
    """

    def __init__(
        self,
        train: ImageDataset,
        test: ImageDataset,
        *,
        cache_dir: Path | None = None,
        seed: int = 0,
        num_quality_samples: int = 2000,
        tstr_samples: int = 30000,
        tstr_epochs: int = TSTR_EPOCHS,
        classifier_epochs: int = FEATURE_CLASSIFIER_EPOCHS,
        tstr_repeats: int = 1,
        tstr_schedule: str = "cosine",
    ) -> None:
        minimum = max(INCEPTION_LIKE_SPLITS, PRECISION_RECALL_K + 1)
        if num_quality_samples < minimum:
            raise ValueError(
                f"num_quality_samples must be >= {minimum}, got {num_quality_samples}; "
                "use a few hundred or more for stable numbers"
            )
        if tstr_samples < 1 or tstr_epochs < 1 or tstr_repeats < 1:
            raise ValueError(
                "tstr_samples, tstr_epochs and tstr_repeats must be >= 1, got "
                f"{tstr_samples}, {tstr_epochs}, {tstr_repeats}"
            )
        if tstr_schedule not in SCHEDULES:
            raise ValueError(
                f"tstr_schedule {tstr_schedule!r}: choose one of {', '.join(SCHEDULES)}"
            )
        if train.num_classes != test.num_classes:
            raise ValueError(
                f"train has {train.num_classes} classes but test has {test.num_classes}; "
                "pass two splits of the same data set"
            )
        self.train = train
        self.test = test
        self.seed = seed
        self.num_classes = train.num_classes
        self.num_quality_samples = min(num_quality_samples, len(test), len(train))
        self.tstr_samples = tstr_samples
        self.tstr_epochs = tstr_epochs
        self.tstr_repeats = tstr_repeats
        #: The TSTR classifier's learning-rate schedule (``train_classifier``).
        self.tstr_schedule = tstr_schedule
        self.classifier = FeatureClassifier.load_or_train(
            train, test, cache_dir=cache_dir, seed=REFERENCE_SEED, epochs=classifier_epochs
        )
        n = self.num_quality_samples
        test_rows = torch.randperm(
            len(test), generator=torch_generator(REFERENCE_SEED, "eval", "test-rows")
        )
        self._real_test_images = test.subset(test_rows[:n]).float_images()
        self._real_test_feats = self.classifier.features(self._real_test_images)
        self._reference: dict[str, float] | None = None

    def evaluate(
        self, generate: Generate, *, tstr: bool = True, tstr_samples: int | None = None
    ) -> dict[str, float]:
        """Quality metrics of ``generate``, ``real_test_accuracy``, and, if ``tstr``, TSTR scores.

        ``generate`` is called under ``torch.no_grad()`` with at most 1000 labels at a
        time. See ``describe()`` for what each key was computed on.

        Raises:
            ValueError: ``generate`` returned the wrong shape, NaN/Inf, or values outside [0, 1].
        """
        labels = balanced_labels(
            self.num_quality_samples,
            self.num_classes,
            torch_generator(self.seed, "eval", "quality-labels"),
        )
        metrics = self._quality_metrics(self._generate(generate, labels))
        metrics["real_test_accuracy"] = self.classifier.test_accuracy
        if tstr:
            n = self.tstr_samples if tstr_samples is None else tstr_samples
            if n < 1:
                raise ValueError(f"tstr_samples must be >= 1, got {n}")
            runs = [self._tstr(generate, n, r) for r in range(self.tstr_repeats)]
            metrics.update(mean_over_repeats(runs, std_of="tstr_accuracy"))
        return metrics

    def _tstr(self, generate: Generate, n: int, repeat: int) -> dict[str, float]:
        # Repeat 0 keeps the streams of a single TSTR, so one repeat is the old figure.
        tail = () if repeat == 0 else (repeat,)
        labels = balanced_labels(
            n, self.num_classes, torch_generator(self.seed, "eval", "tstr-labels", *tail)
        )
        result = train_synthetic_test_real(
            self._generate(generate, labels),
            labels,
            self.test.float_images(),
            self.test.labels,
            self.num_classes,
            epochs=self.tstr_epochs,
            seed=derive_seed(self.seed, "eval", "tstr-classifier", *tail),
            schedule=self.tstr_schedule,
        )
        return result.as_dict()

    def reference(self) -> dict[str, float]:
        """The quality metrics of real train images vs the real test subset: the real-data floor.

        Uses ``num_quality_samples`` train images (a fixed subset); computed once per instance.
        """
        if self._reference is None:
            rows = torch.randperm(
                len(self.train), generator=torch_generator(REFERENCE_SEED, "eval", "train-rows")
            )
            real_train = self.train.subset(rows[: self.num_quality_samples]).float_images()
            self._reference = self._quality_metrics(real_train)
        return dict(self._reference)

    def evaluate_task(self, task: Any, generator: torch.Generator, final: bool) -> dict[str, float]:
        """``evaluate`` of ``task``'s class-conditional samples; TSTR only when ``final``."""

        def generate(labels: torch.Tensor) -> torch.Tensor:
            images: torch.Tensor = task.sample(labels, generator)
            return images

        figures = self.evaluate(generate, tstr=final)
        # A task whose sampling is costly (diffusion: DDIM steps) times its own sampling and
        # says how it sampled, so that every figure carries its sampling cost.
        sampling_cost = getattr(task, "sampling_cost", None)
        if sampling_cost is not None:
            figures.update(sampling_cost())
        return figures

    def describe(self) -> dict[str, str]:
        """For each metric key: what it was computed on and with which feature extractor."""
        n = self.num_quality_samples
        extractor = f"feature extractor: {self.classifier.description}"
        samples = (
            f"{n} generated images (labels balanced over {self.num_classes} classes) vs {n} "
            f"real {self.test.name} test images (a fixed subset, the same for every run)"
        )
        features = f"128-d penultimate features; {samples}; {extractor}"
        kid_size = min(KID_SUBSET_SIZE, n)
        epochs = f"{self.tstr_epochs} epoch{'s' if self.tstr_epochs != 1 else ''}"
        lr = "" if self.tstr_schedule == "cosine" else f", {self.tstr_schedule} learning rate"
        tstr = (
            f"fresh SmallCNN trained {epochs}{lr} on {self.tstr_samples} generated images (labels "
            f"balanced; fewer if evaluate() was given tstr_samples), tested on all "
            f"{len(self.test)} real {self.test.name} test images"
        )
        if self.tstr_repeats > 1:
            tstr += (
                f"; mean over {self.tstr_repeats} repeats, each a fresh draw and classifier seed"
            )
        spread = {
            "tstr_accuracy_std": "sample standard deviation of tstr_accuracy over the "
            f"{self.tstr_repeats} repeats"
        }
        return {
            **(spread if self.tstr_repeats > 1 else {}),
            "frechet_distance": "Frechet distance (Heusel et al. 2017 formula; not FID, no "
            f"Inception weights) on {features}",
            "kid": f"kernel distance (Binkowski et al. 2018): mean unbiased MMD^2, cubic "
            f"polynomial kernel, over {KID_SUBSETS} subsets of {kid_size}, on {features}",
            "kid_std": "standard deviation of the KID estimate over its subsets",
            "inception_like_score": "exp(mean KL(p(y|x) || p(y))) (Salimans et al. 2016 "
            f"formula; not IS) with class probabilities of the {extractor}, mean over "
            f"{INCEPTION_LIKE_SPLITS} splits of {n} generated images",
            "inception_like_score_std": "standard deviation of the Inception-like score over "
            "its splits",
            "precision": f"share of generated images inside the real k-NN manifold (k="
            f"{PRECISION_RECALL_K}, Kynkaanniemi et al. 2019) on {features}",
            "recall": f"share of real images inside the generated k-NN manifold (k="
            f"{PRECISION_RECALL_K}, Kynkaanniemi et al. 2019) on {features}",
            "real_test_accuracy": f"accuracy on all {len(self.test)} real {self.test.name} "
            f"test images of the classifier that extracts the features "
            f"({self.classifier.description}); not a ceiling for tstr_accuracy, which "
            "trains longer (benchmarks/tstr_ceiling.py measures that)",
            "tstr_accuracy": f"accuracy of a {tstr}",
            "tstr_precision": f"macro precision of a {tstr}",
            "tstr_recall": f"macro recall of a {tstr}",
            "tstr_f1": f"macro F1 (mean of per-class F1) of a {tstr}",
            "tstr_fpr": f"macro false-positive rate of a {tstr}",
        }

    def _quality_metrics(self, images: torch.Tensor) -> dict[str, float]:
        feats = self.classifier.features(images)
        kid, kid_std = kernel_distance(
            self._real_test_feats,
            feats,
            num_subsets=KID_SUBSETS,
            subset_size=KID_SUBSET_SIZE,
            seed=derive_seed(REFERENCE_SEED, "eval", "kid"),  # part of the yardstick
        )
        score, score_std = inception_like_score(
            self.classifier.probs(images), splits=INCEPTION_LIKE_SPLITS
        )
        precision, recall = precision_recall(self._real_test_feats, feats, k=PRECISION_RECALL_K)
        return {
            "frechet_distance": frechet_distance(self._real_test_feats, feats),
            "kid": kid,
            "kid_std": kid_std,
            "inception_like_score": score,
            "inception_like_score_std": score_std,
            "precision": precision,
            "recall": recall,
        }

    @torch.no_grad()
    def _generate(self, generate: Generate, labels: torch.Tensor) -> torch.Tensor:
        chunks = []
        for start in range(0, len(labels), GENERATE_CHUNK):
            chunk = labels[start : start + GENERATE_CHUNK]
            images = generate(chunk)
            expected = (len(chunk), 1, 28, 28)
            if not isinstance(images, torch.Tensor) or tuple(images.shape) != expected:
                shape = tuple(images.shape) if isinstance(images, torch.Tensor) else type(images)
                raise ValueError(
                    f"generate(labels) must return a tensor of shape {expected} for "
                    f"{len(chunk)} labels, got {shape}"
                )
            images = images.detach().float().cpu()
            if not torch.isfinite(images).all():
                raise ValueError("generate(labels) returned NaN or Inf values")
            low, high = float(images.min()), float(images.max())
            if low < -_RANGE_TOLERANCE or high > 1 + _RANGE_TOLERANCE:
                raise ValueError(
                    f"generate(labels) must return images in [0, 1], got [{low:.3g}, {high:.3g}]; "
                    "map tanh outputs with (x + 1) / 2"
                )
            chunks.append(images.clamp(0.0, 1.0))
        return torch.cat(chunks)


@EVALUATORS.register("images")
def image_evaluator(data: Any, *, seed: int, settings: EvalConfig) -> Evaluator:
    """The images evaluator of a run: ``data`` holds the real ``train`` and ``test`` splits."""
    return Evaluator(
        data.train,
        data.test,
        seed=seed,
        num_quality_samples=settings.num_quality_samples,
        tstr_samples=settings.tstr_samples,
        tstr_epochs=settings.tstr_epochs,
        classifier_epochs=settings.classifier_epochs,
        tstr_repeats=settings.tstr_repeats,
    )
