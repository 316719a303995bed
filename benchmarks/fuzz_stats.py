"""Fuzzing statistics: examples tried and exceptions escaped at each input boundary.

Runs the property-based (hypothesis) fuzz tests in a subprocess, pinned to one core,

    python -m pytest -q -p no:cacheprovider --hypothesis-show-statistics -rpfEsxX \\
        tests/unit/fuzz tests/unit/ledger/test_properties.py

reads hypothesis's statistics (per test and phase: ``N passing, M failing, and K invalid test
cases``) and pytest's one line per test (``-rpfEsxX``: PASSED, FAILED, ERROR, SKIPPED, XFAIL,
XPASS), maps each test file to the boundary it fuzzes, and appends one row per boundary, and a
total, to ``benchmarks/results/faults.md``. A row names the commit, and the files of its
boundary (tests and the code they fuzz) that are on disk but not committed.

    FEDGEN_TEST_DATA_DIR=/path/to/data .venv/bin/python benchmarks/fuzz_stats.py [--cpu 0]
"""

from __future__ import annotations

import argparse
import os
import re
import shutil
import subprocess
import sys
import time
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path

from fedgen.report.results_table import ResultsTable, current_commit

ROOT = Path(__file__).resolve().parents[1]
TESTS = ["tests/unit/fuzz", "tests/unit/ledger/test_properties.py"]
PYTEST = ["-m", "pytest", "-q", "-p", "no:cacheprovider", "--hypothesis-show-statistics"]
SHARED = ["tests/unit/fuzz/strategies.py", "tests/unit/fuzz/conftest.py"]

#: Boundary -> (its test files, the code they fuzz); shared fuzz helpers count for each.
BOUNDARIES: dict[str, tuple[list[str], list[str]]] = {
    "config loader / --set": (
        ["test_fuzz_config.py", "test_fuzz_cli.py"],
        ["src/fedgen/config.py", "src/fedgen/cli.py"],
    ),
    "checkpoint loading": (["test_fuzz_checkpoint.py"], ["src/fedgen/engine/checkpoint.py"]),
    "client payloads": (["test_fuzz_client_update.py"], ["src/fedgen/engine/validation.py"]),
    "secure aggregation messages": (["test_fuzz_secagg.py"], ["src/fedgen/transforms/secagg"]),
    "ledger entries / files": (["test_properties.py"], ["src/fedgen/ledger"]),
}
COLUMNS = [
    "commit",
    "boundary",
    "tests",
    "property tests",
    "examples tried",
    "invalid examples",
    "failing examples",
    "uncaught exceptions (failing tests)",
    "known escapes (xfail)",
    "pytest outcome",
]

_HEADER = re.compile(r"^(\S+\.py::\S+):$")
_COUNTS = re.compile(r"(\d+) passing, (\d+) failing, and (\d+) invalid test cases")
_OUTCOME = re.compile(r"^(PASSED|FAILED|ERROR|XFAIL|XPASS) (.+)$")
#: ``-rs`` folds skips of one place and reason: ``SKIPPED [3] path.py:12: reason``.
_SKIPPED = re.compile(r"^SKIPPED \[(\d+)\] (\S+\.py):(\d+)")
_WORDS = {
    "PASSED": "passed",
    "FAILED": "failed",
    "ERROR": "errors",
    "SKIPPED": "skipped",
    "XFAIL": "xfailed",
    "XPASS": "xpassed",
}


@dataclass
class Boundary:
    """What one boundary's tests did: examples per hypothesis test, outcome per test."""

    examples: dict[str, Counter[str]] = field(default_factory=dict)
    outcomes: dict[str, str] = field(default_factory=dict)

    def total(self, kind: str) -> int:
        return sum(counts[kind] for counts in self.examples.values())


def boundary_of(test_file: str) -> str:
    """The boundary a test file fuzzes; a file no boundary lists counts as its own."""
    name = Path(test_file).name
    return next((b for b, (files, _) in BOUNDARIES.items() if name in files), Path(name).stem)


def parse(output: str) -> dict[str, Boundary]:
    """Hypothesis statistics and pytest's per-test lines, grouped by boundary."""
    found: dict[str, Boundary] = {}
    test: str | None = None
    for line in output.splitlines():
        if header := _HEADER.match(line):
            test = header.group(1)
        elif (counts := _COUNTS.search(line)) and test is not None:
            tally = found.setdefault(boundary_of(test.split("::")[0]), Boundary()).examples
            tally.setdefault(test, Counter()).update(
                dict(zip(("passing", "failing", "invalid"), map(int, counts.groups()), strict=True))
            )
        elif outcome := _OUTCOME.match(line):
            node = outcome.group(2).split(" - ", 1)[0]
            record(found, node, outcome.group(1))
        elif skipped := _SKIPPED.match(line):
            count, path, where = skipped.groups()
            for i in range(int(count)):
                record(found, f"{path}::line {where} #{i}", "SKIPPED")
    return found


def record(found: dict[str, Boundary], node: str, outcome: str) -> None:
    found.setdefault(boundary_of(node.split("::")[0]), Boundary()).outcomes[node] = outcome


def uncommitted(boundary: str) -> list[str]:
    """The boundary's test files, shared helpers and fuzzed code that differ from HEAD."""
    files, code = BOUNDARIES.get(boundary, ([], []))
    tests = [str(p.relative_to(ROOT)) for f in files for p in ROOT.glob(f"tests/**/{f}")]
    shared = SHARED if any(t.startswith("tests/unit/fuzz/") for t in tests) else []
    if not tests + code:
        return []
    status = subprocess.run(
        ["git", "status", "--porcelain", "--", *tests, *shared, *code],
        cwd=ROOT,
        capture_output=True,
        text=True,
    ).stdout
    return [line[3:] + (" (new)" if line.startswith("??") else "") for line in status.splitlines()]


def row(name: str, found: Boundary, commit: str) -> dict[str, object]:
    outcomes = Counter(found.outcomes.values())
    changed = uncommitted(name)
    return {
        "commit": commit + (f"; on disk, not committed: {', '.join(changed)}" if changed else ""),
        "boundary": name,
        "tests": len(found.outcomes),
        "property tests": len(found.examples),
        "examples tried": found.total("passing") + found.total("failing"),
        "invalid examples": found.total("invalid"),
        "failing examples": found.total("failing"),
        "uncaught exceptions (failing tests)": outcomes["FAILED"] + outcomes["ERROR"],
        "known escapes (xfail)": outcomes["XFAIL"],
        "pytest outcome": ", ".join(f"{n} {_WORDS[w]}" for w, n in sorted(outcomes.items())),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--cpu", default="0", help="pin pytest to these cores ('' to not pin)")
    parser.add_argument("--out", type=Path, default=ROOT / "benchmarks/results/faults.md")
    args = parser.parse_args()
    if not os.environ.get("FEDGEN_TEST_DATA_DIR"):
        print("FEDGEN_TEST_DATA_DIR is unset: the tests that need MNIST will skip", file=sys.stderr)
    pin = ["taskset", "-c", args.cpu] if args.cpu and shutil.which("taskset") else []
    command = [*pin, sys.executable, *PYTEST, "-rpfEsxX", *TESTS]
    start = time.perf_counter()
    proc = subprocess.run(command, cwd=ROOT, capture_output=True, text=True)
    seconds = time.perf_counter() - start
    lines = proc.stdout.strip().splitlines()
    summary = lines[-1].strip("= ") if lines else f"no output (exit status {proc.returncode})"
    found = parse(proc.stdout)
    if not found:
        raise SystemExit(f"pytest printed nothing to parse:\n{proc.stdout}\n{proc.stderr}")

    table = ResultsTable(args.out, COLUMNS)
    table.start(
        "Fuzzing: examples tried and uncaught exceptions per input boundary",
        notes=[
            f"pytest: `{' '.join(['python', *PYTEST, '-rpfEsxX', *TESTS])}`"
            + (f", pinned with `{' '.join(pin)}`" if pin else "")
            + f"; {seconds:.0f} s; exit status {proc.returncode}",
            "examples tried: hypothesis's passing + failing test cases over all phases "
            "(generate, reuse, shrink); invalid examples: those a filter or assume() "
            "rejected before the test body ran; tests: all tests of the boundary's files, "
            "property-based or not; uncaught exceptions: failed or erroring tests; known "
            "escapes: tests marked xfail (strict) for a fix left to the code's owner",
        ],
    )
    commit = current_commit()
    for name in [*BOUNDARIES, *sorted(set(found) - set(BOUNDARIES))]:
        print(table.append(row(name, found.get(name, Boundary()), commit)))
    everything = Boundary(
        {t: c for b in found.values() for t, c in b.examples.items()},
        {t: o for b in found.values() for t, o in b.outcomes.items()},
    )
    total = row("all boundaries", everything, commit)
    print(table.append({**total, "commit": commit, "pytest outcome": summary}))


if __name__ == "__main__":
    main()
