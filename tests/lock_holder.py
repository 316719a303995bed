"""Another process holding a run's lock, as a running fedgen would (for refusal tests)."""

from __future__ import annotations

import subprocess
import sys
import textwrap
from pathlib import Path

#: A process that takes the same flock a run takes and keeps it until killed.
HOLDER = textwrap.dedent(
    """
    import fcntl, os, sys, time
    path = sys.argv[1]
    flags = os.O_RDONLY | os.O_DIRECTORY if os.path.isdir(path) else os.O_RDWR | os.O_CREAT
    fd = os.open(path, flags)
    fcntl.flock(fd, fcntl.LOCK_EX)
    print("held", flush=True)
    time.sleep(120)
    """
)


def hold_elsewhere(path: Path) -> subprocess.Popen[str]:
    """Another process holding ``path``'s lock (returns once it holds it)."""
    proc = subprocess.Popen(
        [sys.executable, "-c", HOLDER, str(path)], stdout=subprocess.PIPE, text=True
    )
    assert proc.stdout is not None and proc.stdout.readline().strip() == "held"
    proc.stdout.close()  # it prints nothing more
    return proc


def is_held(path: Path) -> bool:
    """Whether a run's lock on ``path`` is held, as another process finds it."""
    code = (
        "import fcntl, os, sys\n"
        "fd = os.open(sys.argv[1], os.O_RDONLY)\n"
        "try:\n    fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)\n"
        "except BlockingIOError:\n    sys.exit(3)\n"
    )
    probe = subprocess.run([sys.executable, "-c", code, str(path)], capture_output=True, text=True)
    assert probe.returncode in (0, 3), probe.stderr
    return probe.returncode == 3
