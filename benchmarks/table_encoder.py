"""The table encoder's federated fit: scikit-learn's mixture in "full" and "diag" form.

For each real table, its rows split into ``--clients`` equal shards, ``fit_encoder_federated``
fits every numeric column's variational Gaussian mixture on each client (CTGAN's mode-
specific normalisation) and merges them on the server. The fit runs with
``MIXTURE_COVARIANCE`` "full" (scikit-learn's default) and "diag" alternately,
``--repeats`` times each, in this one process (pin it with taskset); a row reports the
median seconds of each, their ratio, and the largest difference between the two encoders'
mode weights, means and standard deviations (for 1-D values the two forms are one model).

    taskset -c 0 python benchmarks/table_encoder.py --out benchmarks/results/table_encoder.md
"""

from __future__ import annotations

import argparse
import platform
import statistics
import subprocess
import time
from datetime import UTC, datetime
from pathlib import Path

import numpy as np
import torch

from fedgen.data import table_encoder
from fedgen.data.table_encoder import encoder_state, fit_encoder_federated
from fedgen.data.table_sources import get_table_source

TABLES = ("breast_cancer", "fair", "randhie")


def _commit() -> str:
    out = subprocess.run(["git", "rev-parse", "--short", "HEAD"], capture_output=True, text=True)
    dirty = subprocess.run(["git", "status", "--porcelain", "src"], capture_output=True, text=True)
    return out.stdout.strip() + ("+dirty" if dirty.stdout.strip() else "")


def _cpu() -> str:
    for line in Path("/proc/cpuinfo").read_text().splitlines():
        if line.startswith("model name"):
            return line.split(":", 1)[1].strip()
    return platform.processor() or "unknown CPU"


def _modes(encoder: table_encoder.TableEncoder) -> np.ndarray:
    """Every numeric column's mode weights, means and standard deviations, concatenated."""
    parts = [
        np.asarray(column[key], dtype=float)
        for column in encoder_state(encoder)["encodings"]
        if "means" in column
        for key in ("weights", "means", "stds")
    ]
    return np.concatenate(parts) if parts else np.zeros(0)


def _fit(frames: list, schema, covariance: str) -> tuple[float, np.ndarray]:
    table_encoder.MIXTURE_COVARIANCE = covariance
    start = time.perf_counter()
    encoder = fit_encoder_federated(frames, schema, max_modes=10, seed=0)
    return time.perf_counter() - start, _modes(encoder)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--tables", nargs="+", default=list(TABLES))
    parser.add_argument("--clients", type=int, default=3)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--out", type=Path, default=Path("benchmarks/results/table_encoder.md"))
    args = parser.parse_args()
    torch.set_num_threads(1)
    header = (
        f"\n## {datetime.now(UTC).isoformat(timespec='seconds')} (commit {_commit()}) "
        f"on {_cpu()}, Python {platform.python_version()}\n\n"
        f"Command: `table_encoder.py --tables {' '.join(args.tables)} --clients {args.clients} "
        f"--repeats {args.repeats}`; one process, medians of {args.repeats} alternated fits\n\n"
        "| table | rows | numeric columns | clients | full s | diag s | full / diag "
        "| max abs difference of the modes |\n|---|---|---|---|---|---|---|---|\n"
    )
    args.out.parent.mkdir(parents=True, exist_ok=True)
    with args.out.open("a") as out:
        out.write(header)
    for name in args.tables:
        source = get_table_source(name)
        frame = source.load()
        frames = [frame.iloc[i :: args.clients].reset_index(drop=True) for i in range(args.clients)]
        numeric = len(source.schema.names) - len(source.schema.categorical())
        times: dict[str, list[float]] = {"full": [], "diag": []}
        modes: dict[str, np.ndarray] = {}
        for _ in range(args.repeats):
            for covariance in times:
                seconds, modes[covariance] = _fit(frames, source.schema, covariance)
                times[covariance].append(seconds)
        full, diag = statistics.median(times["full"]), statistics.median(times["diag"])
        gap = (
            float(np.max(np.abs(modes["full"] - modes["diag"])))
            if modes["full"].shape == modes["diag"].shape
            else float("nan")
        )
        row = (
            f"| {name} | {len(frame)} | {numeric} | {args.clients} | {full:.2f} | {diag:.2f} "
            f"| {full / diag:.2f} | {gap:.1e} |\n"
        )
        with args.out.open("a") as out:
            out.write(row)
        print(row, end="", flush=True)


if __name__ == "__main__":
    main()
