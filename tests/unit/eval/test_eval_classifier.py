"""FeatureClassifier: cache reads, cache repair, and what it reports about itself."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from fedgen.data.dataset import ImageDataset
from fedgen.eval import classifier as classifier_module
from fedgen.eval.classifier import FeatureClassifier, dataset_fingerprint

SMALL_TRAIN_SIZE = 600


@pytest.fixture(scope="module")
def small_train(fashion_train: ImageDataset) -> ImageDataset:
    return fashion_train.subset(torch.arange(SMALL_TRAIN_SIZE))


@pytest.fixture(scope="module")
def small_test(fashion_test: ImageDataset) -> ImageDataset:
    return fashion_test.subset(torch.arange(500))


def _forbid_training(monkeypatch: pytest.MonkeyPatch) -> None:
    def fail(*args: object, **kwargs: object) -> None:
        raise AssertionError("train_classifier was called although a cache file exists")

    monkeypatch.setattr(classifier_module, "train_classifier", fail)


def _count_training(monkeypatch: pytest.MonkeyPatch) -> list[int]:
    calls: list[int] = []
    real_train = classifier_module.train_classifier

    def counting(*args: object, **kwargs: object) -> object:
        calls.append(1)
        return real_train(*args, **kwargs)  # type: ignore[arg-type]

    monkeypatch.setattr(classifier_module, "train_classifier", counting)
    return calls


def test_second_load_reads_the_cache(
    small_train: ImageDataset,
    small_test: ImageDataset,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    # Prepare
    calls = _count_training(monkeypatch)
    first = FeatureClassifier.load_or_train(small_train, small_test, cache_dir=tmp_path, epochs=1)
    expected_path = (
        tmp_path
        / "classifiers"
        / f"fashion-mnist-{dataset_fingerprint(small_train)}-e1-lr0.002-cosine-s0.pt"
    )
    # Execute
    _forbid_training(monkeypatch)
    second = FeatureClassifier.load_or_train(small_train, small_test, cache_dir=tmp_path, epochs=1)
    # Assert
    assert calls == [1]
    assert expected_path.is_file()
    assert [p.name for p in expected_path.parent.iterdir()] == [expected_path.name]  # no tmp left
    assert second.test_accuracy == first.test_accuracy
    images = small_test.float_images()[:20]
    assert torch.equal(first.features(images), second.features(images))
    assert second.description == first.description


def test_corrupt_cache_file_is_retrained(
    small_train: ImageDataset,
    small_test: ImageDataset,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    path = FeatureClassifier.cache_path(small_train, tmp_path, seed=0, epochs=1)
    path.parent.mkdir(parents=True)
    path.write_bytes(b"not a torch file")
    calls = _count_training(monkeypatch)
    classifier = FeatureClassifier.load_or_train(
        small_train, small_test, cache_dir=tmp_path, epochs=1
    )
    assert calls == [1]
    assert classifier.test_accuracy > 0.5
    # The bad file was replaced by a good one.
    _forbid_training(monkeypatch)
    FeatureClassifier.load_or_train(small_train, small_test, cache_dir=tmp_path, epochs=1)


def test_cache_dir_comes_from_environment(
    small_train: ImageDataset,
    small_test: ImageDataset,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setenv("FEDGEN_CACHE_DIR", str(tmp_path))
    FeatureClassifier.load_or_train(small_train, small_test, epochs=1, seed=3)
    assert FeatureClassifier.cache_path(small_train, seed=3, epochs=1).is_file()
    assert FeatureClassifier.cache_path(small_train, seed=3, epochs=1).parent.parent == tmp_path


def test_other_training_data_gets_another_cache_file(small_train: ImageDataset) -> None:
    other = small_train.subset(torch.arange(SMALL_TRAIN_SIZE - 1))
    assert FeatureClassifier.cache_path(other, Path("/c")) != FeatureClassifier.cache_path(
        small_train, Path("/c")
    )


def test_another_learning_rate_or_schedule_gets_another_cache_file(
    small_train: ImageDataset, monkeypatch: pytest.MonkeyPatch
) -> None:
    # A classifier cached under one recipe must not be read back after the recipe changed.
    base = FeatureClassifier.cache_path(small_train, Path("/c"))
    monkeypatch.setattr(classifier_module, "FEATURE_CLASSIFIER_LR", 1e-3)
    other_lr = FeatureClassifier.cache_path(small_train, Path("/c"))
    monkeypatch.setattr(classifier_module, "FEATURE_CLASSIFIER_SCHEDULE", "constant")
    other_schedule = FeatureClassifier.cache_path(small_train, Path("/c"))
    assert len({base, other_lr, other_schedule}) == 3


def test_features_probs_and_description(
    feature_classifier: FeatureClassifier, fashion_test: ImageDataset
) -> None:
    images = fashion_test.float_images()[:2500]
    feats = feature_classifier.features(images, batch_size=1000)
    probs = feature_classifier.probs(images)
    assert feats.shape == (2500, 128)
    assert (feats >= 0).all()  # post-ReLU
    assert probs.shape == (2500, 10)
    assert torch.allclose(probs.sum(dim=1), torch.ones(2500))
    # The real-data classifier the whole eval rests on must be good at its job.
    assert feature_classifier.test_accuracy > 0.8
    accuracy = float((probs.argmax(dim=1) == fashion_test.labels[:2500]).double().mean())
    assert accuracy == pytest.approx(feature_classifier.test_accuracy, abs=0.03)
    assert feature_classifier.description.startswith(
        "SmallCNN trained 1 epoch on fashion-mnist train (12000 images), real test accuracy 0."
    )


def test_a_cache_that_cannot_be_written_is_said_and_the_classifier_still_returned(
    small_train, small_test, tmp_path, caplog
):
    # Prepare: the cache folder would sit under a file (as a read-only home would refuse;
    # permissions do not stop root, a file in the way does).
    blocker = tmp_path / "afile"
    blocker.write_text("mine")
    # Execute
    with caplog.at_level("WARNING"):
        classifier = FeatureClassifier.load_or_train(
            small_train, small_test, cache_dir=blocker / "cache", epochs=1
        )
    # Assert: the evaluation goes on with the classifier in memory, and the log says why.
    assert classifier.test_accuracy > 0.5
    assert "cannot cache the feature classifier" in caplog.text
    assert blocker.read_text() == "mine"
