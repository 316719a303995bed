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


#: What this process holds: the resolved path, its descriptor (-1 on a file system that
#: cannot lock) and how many of its layers hold it (the CLI, a downstream run, the run).
_HELD: dict[str, tuple[int, int]] = {}


class Hold:
    """An exclusive, non-blocking ``flock`` on ``path`` (a folder or a lock file).

    ``what`` names the thing held in the refusal, ``advice`` says what to do instead.
    Within one process holds nest: the CLI, a downstream run and the run inside it may
    each hold the folder, and the lock goes with the outermost. A file system that cannot
    lock (some network mounts) is warned about, not refused: the run goes on unguarded
    rather than not at all.
    """

    def __init__(self, path: Path, what: str, advice: str) -> None:
        self.path, self.what, self.advice = path, what, advice
        self._key: str | None = None

    @property
    def held(self) -> bool:
        """True between ``acquire`` and ``release``."""
        return self._key is not None

    def acquire(self) -> None:
        """Take the hold; raise ``RunHeldError`` if another process has it."""
        if self._key is not None:
            return
        key = os.path.realpath(self.path)
        if key in _HELD:
            fd, count = _HELD[key]
            _HELD[key] = (fd, count + 1)
            self._key = key
            return
        try:
            if self.path.is_dir():
                fd = os.open(self.path, os.O_RDONLY | os.O_DIRECTORY)
            else:
                fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o600)
        except OSError as exc:
            raise ConfigError(
                f"cannot open {self.path} to hold {self.what} ({exc.strerror}); check that "
                "this user may read and write it"
            ) from None
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError as exc:
            os.close(fd)
            if exc.errno in (errno.EWOULDBLOCK, errno.EAGAIN):
                raise RunHeldError(
                    f"{self.what} is being written by another process right now; {self.advice}"
                ) from None
            log.warning("cannot lock %s (%s): nothing stops a second writer", self.path, exc)
            fd = -1
        _HELD[key] = (fd, 1)
        self._key = key

    def release(self) -> None:
        """Drop the hold (the outermost one closes the descriptor, which drops the lock)."""
        if self._key is None:
            return
        fd, count = _HELD[self._key]
        if count > 1:
            _HELD[self._key] = (fd, count - 1)
        else:
            del _HELD[self._key]
            if fd >= 0:
                os.close(fd)
        self._key = None

    def __enter__(self) -> Hold:
        self.acquire()
        return self

    def __exit__(self, *exc: object) -> None:
        self.release()


def folder_hold(run_dir: Path) -> Hold:
    """The hold a writer of run folder ``run_dir`` takes (the CLI, a downstream run, the
    run itself, a ServerApp)."""
    return Hold(
        run_dir,
        f"run folder {run_dir}",
        "wait for that process to end, or stop it (Ctrl-C keeps its last complete round, "
        "which a resume continues from); a new run needs a folder of its own",
    )
