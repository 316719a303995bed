"""Run the ``fedgen`` command line in a subprocess, as a user would.

One definition for every integration test (pytest puts ``tests/`` on ``sys.path``).
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]

#: ``fedgen run`` options of a one-round cgan run (no evaluation) on three MNIST clients,
#: the smallest finished run folder a CLI test can work on.
TINY_RUN = [
    f"--set={item}"
    for item in (
        "data.sources=[mnist]",
        "data.num_clients=3",
        "federation.rounds=1",
        "federation.local_steps=2",
        "eval.every=0",
        "eval.final=false",
        "eval.grid_per_class=2",
    )
]


def fedgen(
    *args: str, check: bool = True, env_extra: dict | None = None, cwd: Path | None = None
) -> subprocess.CompletedProcess:
    """``python -m fedgen.cli ARGS`` from the repository root (or ``cwd``).

    ``FEDGEN_DATA_DIR`` defaults to ``../shared/data`` beside the checkout. With
    ``check`` a non-zero exit raises ``AssertionError`` with both output streams.
    """
    env = {**os.environ, **(env_extra or {})}
    env.setdefault("FEDGEN_DATA_DIR", str(ROOT.parent / "shared" / "data"))
    proc = subprocess.run(
        [sys.executable, "-m", "fedgen.cli", *args],
        capture_output=True,
        text=True,
        env=env,
        cwd=cwd or ROOT,
        timeout=600,
    )
    if check and proc.returncode != 0:
        raise AssertionError(f"fedgen {' '.join(args)} failed:\n{proc.stdout}\n{proc.stderr}")
    return proc


def fedgen_here(
    *args: str, check: bool = True, env_extra: dict | None = None
) -> subprocess.CompletedProcess:
    """``fedgen ARGS`` in this process (click's runner), answered as ``fedgen`` answers.

    For commands whose process is not what a test checks: it saves the start of a Python
    process and the import of torch (several seconds each on a loaded two-core machine).
    An exception the command does not turn into an exit is a traceback on stderr and exit
    1, as the real process would print it.
    """
    import logging
    import traceback
    import warnings

    from typer.testing import CliRunner

    from fedgen.cli import app

    class Stderr:
        """Whatever ``sys.stderr`` is when a record is logged (the runner swaps it in)."""

        def write(self, text: str) -> None:
            sys.stderr.write(text)

        def flush(self) -> None:
            sys.stderr.flush()

    env = {**(env_extra or {})}
    if "FEDGEN_DATA_DIR" not in os.environ and "FEDGEN_DATA_DIR" not in env:
        env["FEDGEN_DATA_DIR"] = str(ROOT.parent / "shared" / "data")
    # What fedgen's main() sets up: warnings and errors logged to stderr; and the
    # repository root as the working directory, as ``fedgen`` runs.
    handler = logging.StreamHandler(Stderr())  # type: ignore[arg-type]
    handler.setLevel(logging.WARNING)
    handler.setFormatter(logging.Formatter("%(levelname)s %(name)s: %(message)s"))
    logging.getLogger().addHandler(handler)
    cwd = os.getcwd()
    os.chdir(ROOT)
    try:
        # Python's warnings reach stderr, as in the real process (pytest would collect them
        # instead, and a test of the command's output would not see them).
        with warnings.catch_warnings():
            warnings.simplefilter("default")
            warnings.showwarning = _warning_to_stderr
            result = CliRunner().invoke(app, list(args), env=env)
    finally:
        os.chdir(cwd)
        logging.getLogger().removeHandler(handler)
    stderr = result.stderr
    code = result.exit_code
    if result.exception is not None and not isinstance(result.exception, SystemExit):
        stderr += "".join(traceback.format_exception(result.exception))
        code = 1
    proc = subprocess.CompletedProcess(["fedgen", *args], code, result.stdout, stderr)
    if check and code != 0:
        raise AssertionError(f"fedgen {' '.join(args)} failed:\n{proc.stdout}\n{proc.stderr}")
    return proc


def _warning_to_stderr(
    message: Warning | str,
    category: type[Warning],
    filename: str,
    lineno: int,
    file: object = None,
    line: str | None = None,
) -> None:
    import warnings

    sys.stderr.write(warnings.formatwarning(message, category, filename, lineno, line))
