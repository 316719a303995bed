"""Worker processes that die with their parent.

A worker whose server was killed with SIGKILL would otherwise train on for
minutes, holding a core and memory nobody will read. Two mechanisms, so at
least one holds on every platform:

- on Linux, ``prctl(PR_SET_PDEATHSIG, SIGKILL)``: the kernel kills the worker
  the moment its parent thread exits;
- everywhere, a daemon thread that polls once a second and ends the process
  when it was re-parented or the server's pid is gone.

A worker started by a fork server (``multiprocessing``'s ``forkserver``) has
the fork server as its parent, not the server: the fork server ends when the
server does (its pipe from the server closes), and the kernel's signal follows
from there; the polling thread watches the server itself.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import os
import signal
import sys
import threading
import time

_PR_SET_PDEATHSIG = 1


def die_with_parent(parent_pid: int, poll_seconds: float = 1.0) -> None:
    """Make this process end when ``parent_pid`` (its parent, or the process that asked
    a fork server for it) does; call it first thing in a worker."""
    if sys.platform.startswith("linux"):
        try:
            libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6", use_errno=True)
            libc.prctl(_PR_SET_PDEATHSIG, signal.SIGKILL)
        except (OSError, AttributeError):
            pass  # the polling thread below still holds
    direct = os.getppid()

    def orphaned() -> bool:
        return os.getppid() != direct or not _exists(parent_pid)

    # The parent may have died before prctl took effect.
    if orphaned():
        os._exit(1)

    def watch() -> None:
        while True:
            time.sleep(poll_seconds)
            if orphaned():
                # No cleanup: the work is unwanted and nobody will read its result.
                os._exit(1)

    threading.Thread(target=watch, name="fedgen-parent-watch", daemon=True).start()


def _exists(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # alive, someone else's (cannot be ours, but not gone)
        return True
    return True
