"""After a run that fuzzed any boundary: examples tried and exceptions escaped, per boundary."""

from __future__ import annotations

from typing import Any

from strategies import ESCAPED, TRIED


def pytest_terminal_summary(terminalreporter: Any) -> None:
    if not TRIED:
        return
    tr = terminalreporter
    tr.section("fuzzed input boundaries")
    tr.write_line(f"{'boundary':<16}{'examples':>10}  uncaught exceptions")
    for boundary in sorted(TRIED):
        escaped = {name: n for (b, name), n in ESCAPED.items() if b == boundary}
        listed = ", ".join(f"{name} x{n}" for name, n in sorted(escaped.items())) or "none"
        tr.write_line(f"{boundary:<16}{TRIED[boundary]:>10}  {listed}")
