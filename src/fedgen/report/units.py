"""Figures in the units a person reads: 325.5 MB, 6 min 54 s, 75.5%.

Raw counts (341331840 bytes, 414.2 seconds) stay in the run's JSON files; the
report shows these forms beside or instead of them.
"""

from __future__ import annotations

import math

_BYTE_UNITS = ((1e12, "TB"), (1e9, "GB"), (1e6, "MB"), (1e3, "kB"))


def format_bytes(count: float) -> str:
    """Bytes in decimal units with three significant digits: ``341.3 MB``, ``1.2 GB``."""
    if not math.isfinite(count):
        return str(count)
    for size, name in _BYTE_UNITS:
        if abs(count) >= size:
            value = count / size
            return f"{value:.1f} {name}" if abs(value) < 100 else f"{value:.0f} {name}"
    return f"{int(count)} B"


def format_duration(seconds: float) -> str:
    """A wall-clock duration: ``0.8 s``, ``32 s``, ``6 min 54 s``, ``2 h 05 min``."""
    if not math.isfinite(seconds) or seconds < 0:
        return str(seconds)
    if seconds < 10:
        return f"{seconds:.1f} s"
    whole = round(seconds)
    if whole < 60:
        return f"{whole} s"
    minutes, secs = divmod(whole, 60)
    if minutes < 60:
        return f"{minutes} min {secs:02d} s"
    hours, minutes = divmod(minutes, 60)
    return f"{hours} h {minutes:02d} min"


def format_share(value: float) -> str:
    """A fraction in [0, 1] as a percentage with one decimal: ``0.755`` -> ``75.5%``."""
    if not math.isfinite(value):
        return str(value)
    return f"{100 * value:.1f}%"
