"""Files written whole or not at all.

A run folder's ``config.yaml`` is the only copy of its recipe (checkpoints keep its
fingerprint only), so a kill while it is rewritten must not leave it cut short:
the text goes to a temporary file, reaches the disk, then takes the name.
"""

from __future__ import annotations

import errno
import os
from pathlib import Path


def write_text_atomic(path: Path, text: str) -> None:
    """Replace ``path``'s content with ``text`` (UTF-8) in one step: a reader, or a run
    killed meanwhile, sees the old file or the new one, never a part of either."""
    tmp = path.with_name(path.name + ".tmp")
    try:
        with open(tmp, "w", encoding="utf-8") as f:
            f.write(text)
            f.flush()
            os.fsync(f.fileno())
    except BaseException:
        tmp.unlink(missing_ok=True)  # no half-written leftover beside the file
        raise
    os.replace(tmp, path)
    folder = os.open(path.parent, os.O_RDONLY)
    try:
        os.fsync(folder)  # the rename survives a power cut
    except OSError as exc:
        # Some filesystems (network mounts) cannot sync a folder.
        if exc.errno not in (errno.EINVAL, errno.ENOTSUP):
            raise
    finally:
        os.close(folder)
