"""How long the process pool takes to start its workers: spawned, against forked from
a fork server (the pool's way since 2026-12-02), side by side in one run.

For the default recipe (``configs/fmnist_cgan.yaml``), each start method runs in a
fresh interpreter that starts a pool of ``--workers`` workers ``--pools`` times in a
row: the first pool of the fork server pays for the server's own start (importing
torch and fedgen once), later pools only fork. Each row is the wall seconds until every
worker has built its clients (``ProcessPool.start``). Run it pinned to one core
(``taskset -c 0``): wall time is then the CPU the start costs. Rows go to
``benchmarks/results/speed.md`` one at a time.

    taskset -c 0 python benchmarks/pool_start.py [--workers 2] [--pools 3]
"""

from __future__ import annotations

import argparse
import json
import multiprocessing as mp
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
COLUMNS = ["start_method", "pool", "workers", "start_s"]


def child(method: str, workers: int, pools: int) -> None:
    """In a fresh interpreter: start and close ``pools`` pools; one JSON line each."""
    from fedgen.config import load_config
    from fedgen.engine.backends import process_pool
    from fedgen.experiment import build_experiment

    if method == "spawn":  # the pool's way before the fork server
        process_pool._start_context = lambda: mp.get_context("spawn")  # type: ignore[assignment]
    cfg = load_config(
        ROOT / "configs/fmnist_cgan.yaml",
        [f"backend.params={{workers: {workers}, threads: 1}}", "threads=1", "ledger=false"],
    )
    fed = build_experiment(cfg).federation
    side = fed.client_side
    assert side is not None, "a recipe's federation builds its clients from the recipe"
    for pool in range(1, pools + 1):
        start = time.perf_counter()
        fed.backend.start(side)
        seconds = time.perf_counter() - start
        fed.backend.close()
        print(json.dumps({"pool": pool, "start_s": seconds}), flush=True)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--pools", type=int, default=3)
    parser.add_argument("--methods", nargs="+", default=["spawn", "forkserver"])
    parser.add_argument("--results", type=Path, default=ROOT / "benchmarks/results/speed.md")
    parser.add_argument("--child", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        child(args.child, args.workers, args.pools)
        return

    from fedgen.report.results_table import ResultsTable

    table = ResultsTable(args.results, COLUMNS)
    table.start(
        "pool start: spawned workers against a fork server",
        notes=[
            "default recipe (fmnist_cgan), each method in a fresh interpreter; "
            "start_s: wall seconds until every worker has built its clients"
        ],
    )
    for method in args.methods:
        argv = [sys.executable, __file__, "--child", method]
        argv += ["--workers", str(args.workers), "--pools", str(args.pools)]
        done = subprocess.run(argv, capture_output=True, text=True, check=True)
        for line in done.stdout.splitlines():
            row = json.loads(line)
            print(table.append({"start_method": method, "workers": args.workers, **row}))


if __name__ == "__main__":
    main()
