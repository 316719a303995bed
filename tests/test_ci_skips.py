"""Under CI=true a skipped test fails the suite (see ``conftest.pytest_runtest_makereport``)."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path


def _run(tmp_path: Path, ci: str) -> subprocess.CompletedProcess[str]:
    test = tmp_path / "test_needs_data.py"
    test.write_text("import pytest\n\ndef test_x():\n    pytest.skip('data set missing')\n")
    env = {**os.environ, "CI": ci, "PYTHONPATH": str(Path(__file__).parent)}
    return subprocess.run(
        [sys.executable, "-m", "pytest", "-q", "-p", "conftest", "-c", os.devnull, str(test)],
        capture_output=True,
        text=True,
        env=env,
        cwd=tmp_path,
    )


def test_a_skip_fails_under_ci_and_says_why(tmp_path):
    result = _run(tmp_path, "true")
    assert result.returncode == 1, result.stdout
    assert "skipped under CI=true" in result.stdout and "data set missing" in result.stdout


def test_a_skip_is_a_skip_elsewhere(tmp_path):
    result = _run(tmp_path, "")
    assert result.returncode == 0, result.stdout
    assert "1 skipped" in result.stdout


def test_a_module_skipped_at_collection_fails_under_ci_too(tmp_path):
    test = tmp_path / "test_module_skip.py"
    test.write_text(
        "import pytest\n\npytest.skip('model missing', allow_module_level=True)\n\n"
        "def test_x():\n    pass\n"
    )
    env = {**os.environ, "CI": "true", "PYTHONPATH": str(Path(__file__).parent)}
    result = subprocess.run(
        [sys.executable, "-m", "pytest", "-q", "-p", "conftest", "-c", os.devnull, str(test)],
        capture_output=True,
        text=True,
        env=env,
        cwd=tmp_path,
    )
    assert result.returncode != 0, result.stdout
    assert "model missing" in result.stdout
