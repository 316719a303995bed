"""Where a deployed node keeps what outlives one message, and how it writes it.

A SuperNode with a ``state-dir`` in its node config files each run's keys, private
state and DP-SGD record under ``<state-dir>/<kind>/run-<run id>-client-<id>``; without
one (or without a run id) they live in the run's Flower ``Context`` only.
"""

from __future__ import annotations

import contextlib
import fcntl
import os
import re
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from fedgen.files import write_atomic


def state_dir(context: Any) -> Path | None:
    """The node's ``state-dir`` from its node config, or None without one."""
    folder = context.node_config.get("state-dir")
    return Path(str(folder)) if folder else None


#: What a run id may be: the server chooses it, and it names files on the node.
RUN_ID = re.compile(r"[A-Za-z0-9-]{1,80}")


def check_run_id(run_id: str) -> str:
    """``run_id`` when it is safe as part of a file name, else ``ValueError``: a server's
    ``x/../run-R`` would otherwise reach another run's keys and record."""
    if not RUN_ID.fullmatch(run_id):
        raise ValueError(
            f"the run id {run_id[:40]!r} is not 1-80 letters, digits or '-'; refused "
            "(it names this node's files)"
        )
    return run_id


def node_path(context: Any, kind: str, run_id: str, client_id: int) -> Path | None:
    """``<state-dir>/<kind>/run-<run_id>-client-<client_id>``, or None without a
    state-dir or a run id (the caller adds a suffix when it names a file)."""
    folder = state_dir(context)
    if folder is None or not run_id:
        return None
    return folder / kind / f"run-{check_run_id(run_id)}-client-{client_id}"


def write_owner_only(path: Path, data: bytes) -> None:
    """Write ``path`` whole or not at all, durably, readable by its owner only
    (``fedgen.files.write_atomic``)."""
    write_atomic(path, data)


@contextlib.contextmanager
def locked(path: Path) -> Iterator[None]:
    """Hold an exclusive lock on ``path`` (made if missing) for the block: what two
    SuperNodes sharing one state-dir read, check and write, they do one at a time."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o600)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)
        yield
    finally:
        os.close(fd)  # closing releases the lock
