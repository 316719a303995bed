"""Where a deployed node keeps what outlives one message, and how it writes it.

A SuperNode with a ``state-dir`` in its node config files each run's keys, private
state and DP-SGD record under ``<state-dir>/<kind>/run-<run id>-client-<id>``; without
one (or without a run id) they live in the run's Flower ``Context`` only.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any


def node_path(context: Any, kind: str, run_id: str, client_id: int) -> Path | None:
    """``<state-dir>/<kind>/run-<run_id>-client-<client_id>``, or None without a
    state-dir or a run id (the caller adds a suffix when it names a file)."""
    folder = context.node_config.get("state-dir")
    if not folder or not run_id:
        return None
    return Path(str(folder)) / kind / f"run-{run_id}-client-{client_id}"


def write_owner_only(path: Path, data: bytes) -> None:
    """Write ``path`` whole or not at all (a crash mid-write leaves the previous file),
    readable by its owner only."""
    path.parent.mkdir(parents=True, exist_ok=True)
    partial = path.with_name(path.name + ".partial")
    fd = os.open(partial, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "wb") as f:
        f.write(data)
        f.flush()
        os.fsync(f.fileno())
    os.replace(partial, path)
