"""DESIGN.md's layers hold: the import contracts in pyproject.toml are all kept.

``lint-imports`` (import-linter) reads ``[tool.importlinter]`` and checks every import
in ``src/fedgen``, including imports inside functions and under ``TYPE_CHECKING``. A
broken contract fails this test with import-linter's report, which names each import
that goes the wrong way and its line.
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
import tomllib
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
SRC = ROOT / "src"


def _lint_imports() -> str:
    beside = Path(sys.executable).with_name("lint-imports")
    found = str(beside) if beside.exists() else shutil.which("lint-imports")
    if found is None:
        raise AssertionError(
            "lint-imports is not installed; install the dev tools: pip install -e '.[dev]'"
        )
    return found


def _contracts() -> list[dict]:
    config = tomllib.loads((ROOT / "pyproject.toml").read_text())
    return config["tool"]["importlinter"]["contracts"]


def test_the_import_contracts_are_kept():
    # Execute: analyse this checkout's src/, not whatever fedgen is installed.
    paths = [str(SRC), *filter(None, [os.environ.get("PYTHONPATH")])]
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(paths)}
    result = subprocess.run(
        [_lint_imports(), "--no-cache", "--no-logo", str(ROOT / "pyproject.toml")],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
    )

    # Assert
    assert result.returncode == 0, (
        "an import breaks DESIGN.md's layers (move the code down, or the import up):\n"
        + result.stdout
        + result.stderr
    )


def test_every_privacy_module_has_a_layer():
    """privacy/ spans layers 2 and 3, so the exhaustive check skips it: its modules are
    listed one by one, and a new one must be listed too."""
    # Prepare
    layers = next(c for c in _contracts() if c["id"] == "layers")["layers"]
    declared = {tail.strip(" ()") for layer in layers for tail in re.split(r"[:|]", layer)}
    privacy = SRC / "fedgen" / "privacy"
    modules = {
        f"privacy.{path.stem if path.is_file() else path.name}"
        for path in privacy.iterdir()
        if (path.suffix == ".py" and path.stem != "__init__") or (path / "__init__.py").exists()
    }

    # Assert
    assert modules <= declared, (
        f"give {sorted(modules - declared)} a layer in pyproject.toml's "
        "[[tool.importlinter.contracts]] 'layers'"
    )
