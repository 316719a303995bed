"""One writer per run: a run folder (and a run id) is held by one process at a time.

Two processes resuming one run folder at once (a resume started twice, a restarted
ServerApp while the old one still runs) would each train from the same checkpoint and
append to the same metrics and ledger: the log forks and the figures interleave. The
hold is an advisory ``flock`` taken without waiting, so the second process is refused
at once with what to do; the kernel drops it when the holder exits, however it exits
(a kill -9 leaves no stale lock behind).
"""

from __future__ import annotations

import errno
import fcntl
import logging
import os
from pathlib import Path

from fedgen.errors import ConfigError

log = logging.getLogger(__name__)


class RunHeldError(ConfigError):
    """Another process holds the run folder (or the run id) this one would write."""


class Hold:
    """An exclusive, non-blocking ``flock`` on ``path`` (a folder or a lock file).

    ``what`` names the thing held in the refusal, ``advice`` says what to do instead.
    A file system that cannot lock (some network mounts) is warned about, not refused:
    the run goes on unguarded rather than not at all.
    """

    def __init__(self, path: Path, what: str, advice: str) -> None:
        self.path, self.what, self.advice = path, what, advice
        self._fd: int | None = None

    @property
    def held(self) -> bool:
        """True between ``acquire`` and ``release``."""
        return self._fd is not None

    def acquire(self) -> None:
        """Take the hold; raise ``RunHeldError`` if another process has it."""
        if self._fd is not None:
            return
        if self.path.is_dir():
            fd = os.open(self.path, os.O_RDONLY | os.O_DIRECTORY)
        else:
            fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o600)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError as exc:
            os.close(fd)
            if exc.errno in (errno.EWOULDBLOCK, errno.EAGAIN):
                raise RunHeldError(
                    f"{self.what} is being written by another process right now; {self.advice}"
                ) from None
            log.warning("cannot lock %s (%s): nothing stops a second writer", self.path, exc)
            return
        self._fd = fd

    def release(self) -> None:
        """Drop the hold (closing the descriptor drops the lock)."""
        if self._fd is not None:
            os.close(self._fd)
            self._fd = None

    def __enter__(self) -> Hold:
        self.acquire()
        return self

    def __exit__(self, *exc: object) -> None:
        self.release()
