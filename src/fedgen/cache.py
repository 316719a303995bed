"""Where fedgen keeps what it can rebuild: trained feature classifiers, converted models."""

from __future__ import annotations

import os
from pathlib import Path


def default_cache_dir() -> Path:
    """``$FEDGEN_CACHE_DIR`` if set, else ``~/.cache/fedgen``."""
    env = os.environ.get("FEDGEN_CACHE_DIR")
    return Path(env) if env else Path.home() / ".cache" / "fedgen"
