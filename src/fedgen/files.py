"""Files written whole or not at all, readable by their owner only.

A run folder's ``config.yaml`` is the only copy of its recipe (checkpoints keep its
fingerprint only), and a node's keys and private state are its own: a kill or a power
cut while one is rewritten must leave the previous file, never a part of either. The
bytes go to a temporary file of their own name, reach the disk, then take the name.
"""

from __future__ import annotations

import contextlib
import errno
import os
import tempfile
from pathlib import Path

#: The first bytes of a fedgen checkpoint file (``fedgen.engine.checkpoint``), here so
#: that a layer below the engine can tell a checkpoint from a plain torch file.
CHECKPOINT_MAGIC = b"FEDGENC1"


def write_atomic(path: Path, data: bytes) -> None:
    """Replace ``path``'s content with ``data`` in one step, durably (the rename too),
    readable by its owner only; the folder is made if missing."""
    path.parent.mkdir(parents=True, exist_ok=True)
    # A name of its own: two writers of one file never truncate each other's partial.
    fd, partial = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".partial", dir=path.parent)
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.replace(partial, path)
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(partial)  # no half-written leftover beside the file
        raise
    # The rename itself is durable only once the folder's entry is on disk.
    sync_folder(path.parent)


def sync_folder(folder: Path) -> None:
    """fsync ``folder``, so a rename into it survives a power cut. Some filesystems
    (network mounts) cannot sync a folder; a rename there is as durable as they make it."""
    fd = os.open(folder, os.O_RDONLY)
    try:
        os.fsync(fd)
    except OSError as exc:
        if exc.errno not in (errno.EINVAL, errno.ENOTSUP):
            raise
    finally:
        os.close(fd)


def write_text_atomic(path: Path, text: str) -> None:
    """``write_atomic`` of ``text`` in UTF-8 (encoded first: a text that cannot be
    encoded leaves the file as it was)."""
    write_atomic(path, text.encode("utf-8"))
