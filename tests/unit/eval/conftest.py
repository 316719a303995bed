"""Real Fashion-MNIST for the eval tests, and one feature classifier trained once per session.

The IDX files are parsed here with gzip + numpy so these tests depend only on the
files, not on the data loaders under test elsewhere.
"""

from __future__ import annotations

import gzip
import os
from pathlib import Path

# With other work on the 2 cores, OpenMP threads that spin while waiting made training
# 6x slower (360 vs 62 ms a step, measured); passive waiting avoids it. It only takes
# effect if torch is not imported yet, i.e. when these tests run on their own.
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

import numpy as np
import pytest
import torch

from fedgen.data.dataset import ImageDataset
from fedgen.eval.classifier import FeatureClassifier

FASHION_DIR = Path("/usr/share/datasets/fashion-mnist")
FASHION_CLASSES = (
    "T-shirt/top",
    "Trouser",
    "Pullover",
    "Dress",
    "Coat",
    "Sandal",
    "Shirt",
    "Sneaker",
    "Bag",
    "Ankle boot",
)
CLASSIFIER_TRAIN_SIZE = 12000
"""Images the session's feature classifier sees: enough for ~0.8 test accuracy in seconds."""


def read_idx_split(folder: Path, split: str, name: str) -> ImageDataset:
    """One IDX split (``train`` or ``t10k``): images have a 16-byte header, labels 8 bytes."""
    images_path = folder / f"{split}-images-idx3-ubyte.gz"
    labels_path = folder / f"{split}-labels-idx1-ubyte.gz"
    if not images_path.exists() or not labels_path.exists():
        pytest.skip(f"{folder} lacks {split} IDX files; apt-get install dataset-fashion-mnist")
    with gzip.open(images_path) as handle:
        images = np.frombuffer(handle.read(), dtype=np.uint8, offset=16)
    with gzip.open(labels_path) as handle:
        labels = np.frombuffer(handle.read(), dtype=np.uint8, offset=8)
    return ImageDataset(
        name=name,
        images=torch.from_numpy(images.reshape(-1, 1, 28, 28).copy()),
        labels=torch.from_numpy(labels.astype(np.int64)),
        class_names=FASHION_CLASSES,
    )


@pytest.fixture(scope="session")
def fashion_train() -> ImageDataset:
    """All 60,000 real Fashion-MNIST training images."""
    return read_idx_split(FASHION_DIR, "train", "fashion-mnist")


@pytest.fixture(scope="session")
def fashion_test() -> ImageDataset:
    """All 10,000 real Fashion-MNIST test images."""
    return read_idx_split(FASHION_DIR, "t10k", "fashion-mnist")


@pytest.fixture(scope="session")
def classifier_train(fashion_train: ImageDataset) -> ImageDataset:
    """A fixed random 12,000-image subset of the training split (keeps the suite fast)."""
    rows = torch.randperm(len(fashion_train), generator=torch.Generator().manual_seed(0))
    return fashion_train.subset(rows[:CLASSIFIER_TRAIN_SIZE])


@pytest.fixture(scope="session")
def classifier_cache_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("fedgen-cache")


@pytest.fixture(scope="session")
def feature_classifier(
    classifier_train: ImageDataset, fashion_test: ImageDataset, classifier_cache_dir: Path
) -> FeatureClassifier:
    """Trained once per session (1 epoch on 12,000 images), cached in a temporary folder."""
    return FeatureClassifier.load_or_train(
        classifier_train, fashion_test, cache_dir=classifier_cache_dir, seed=0, epochs=1
    )
