"""Threads and processes on this machine: the same federated work under each split.

The default cGAN recipe (Fashion-MNIST, Dirichlet 0.5, 30 local steps), ``--clients``
clients, ``--rounds`` rounds of half of them, no evaluation, run back to back as:
the sequential ``inprocess`` backend with 1 and with as many torch threads as cores,
and the ``process_pool`` with workers x threads = 1 x cores, cores x 1 and cores x 2
(oversubscribed). Per row: the first round's seconds (workers start, shards load),
the mean of the later rounds, client updates per second in those, the whole run.
Rows go to ``benchmarks/results/speed.md`` one at a time.

    python benchmarks/threads.py [--clients 20] [--rounds 4]
"""

from __future__ import annotations

import argparse
import json
import os
import tempfile
from pathlib import Path

from flower_simulation import round_figures, timed_run

from fedgen.config import PREVIOUS_DEFAULT_EXPERIMENT, load_config
from fedgen.report.results_table import ResultsTable

ROOT = Path(__file__).resolve().parents[1]
COLUMNS = [
    "backend",
    "workers",
    "threads",
    "first_round_s",
    "later_round_s",
    "updates_per_s",
    "total_s",
]


def run(args: argparse.Namespace, backend: str, workers: int, threads: int, out: Path) -> dict:
    """One run; ``threads`` are the process's torch threads (in-process) or each worker's."""
    items = [
        f"data.num_clients={args.clients}",
        f"federation.rounds={args.rounds}",
        "strategy.params={fraction: 0.5, min_clients: 1}",
        "eval.every=0",
        "eval.final=false",
        "ledger=false",
        f"backend.name={backend}",
    ]
    if backend == "process_pool":
        items += [f"backend.params={{workers: {workers}, threads: {threads}}}", "threads=1"]
    else:
        items.append(f"threads={threads}")
    name = f"{backend}-{workers}x{threads}"
    cfg = load_config(
        ROOT / "configs/fmnist_cgan.yaml", [*PREVIOUS_DEFAULT_EXPERIMENT, *items, f"name={name}"]
    )
    seconds, cohort, total = timed_run(cfg, out / name)
    return {
        "backend": backend,
        "workers": workers,
        "threads": threads,
        **round_figures(cohort, seconds, total),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--clients", type=int, default=20)
    parser.add_argument("--rounds", type=int, default=4)
    parser.add_argument("--table", type=Path, default=ROOT / "benchmarks/results/speed.md")
    args = parser.parse_args()
    cores = os.cpu_count() or 2
    table = ResultsTable(args.table, COLUMNS)
    table.start(
        "threads",
        [
            f"The default cGAN, {args.clients} clients, half of them a round, 30 local steps, "
            "no evaluation; each split of the machine's cores run back to back. "
            "later_round_s: mean of rounds 2 and on; updates_per_s = cohort / later_round_s.",
        ],
    )
    splits = [
        ("inprocess", 1, 1),
        ("inprocess", 1, cores),
        ("process_pool", 1, cores),
        ("process_pool", cores, 1),
        ("process_pool", cores, 2),
    ]
    with tempfile.TemporaryDirectory() as tmp:
        for backend, workers, threads in splits:
            row = run(args, backend, workers, threads, Path(tmp))
            table.append(row)
            print(json.dumps(row), flush=True)


if __name__ == "__main__":
    main()
