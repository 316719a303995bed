"""A benchmark's measurement in a fresh process: its own peak RSS, no warm caches, and
(with ``src``) the ``fedgen`` of another source tree.

The parent runs ``script --child '<json spec>'``; the child measures and prints one
``RESULT <json>`` line (``reply``), which ``run_child`` returns.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

PREFIX = "RESULT "


def run_child(script: str, spec: dict[str, Any], src: Path | None = None) -> dict[str, Any]:
    """``script --child spec`` in a fresh Python; its ``RESULT`` line, decoded.

    ``src``: put this ``src`` folder on the child's ``PYTHONPATH`` (a worktree's fedgen).
    Raises ``RuntimeError`` with the child's last line of stderr when it printed no result.
    """
    env = None if src is None else {**os.environ, "PYTHONPATH": str(src)}
    proc = subprocess.run(
        [sys.executable, script, "--child", json.dumps(spec)],
        capture_output=True,
        text=True,
        check=False,
        env=env,
    )
    for line in proc.stdout.splitlines():
        if line.startswith(PREFIX):
            result: dict[str, Any] = json.loads(line.removeprefix(PREFIX))
            return result
    raise RuntimeError((proc.stderr.strip().splitlines() or ["no output"])[-1])


def reply(result: dict[str, Any]) -> None:
    """What a child prints for ``run_child`` to read."""
    print(PREFIX + json.dumps(result), flush=True)
