"""Simulation speed against Flower's simulation runtime, on the same work.

The default cGAN recipe (Fashion-MNIST, Dirichlet 0.5) with ``--clients`` clients,
``--rounds`` rounds of a ``--fraction`` of them, the recipe's 30 local steps each, and
no evaluation: fedgen's backends (``inprocess``, ``process_pool`` with one worker per
core, ``vectorized``) against Flower's simulation runtime (Ray, one CPU per ClientApp
actor, as many actors as cores), whose ClientApp trains the same fedgen task on the same
shard with the same steps and whose FedAvg aggregates (``benchmarks/flower_sim_app.py``).
Both sides keep each worker's data and model between clients. Per row: seconds of the
first round (workers start, shards load), mean seconds of the later rounds, client
updates per second in those, and the whole run's seconds. Rows go to
``benchmarks/results/speed.md`` one at a time, naming commit, machine and command.

``--set`` adds dotted overrides to the recipe, e.g. issue 12's tiny workload (the
7,200-parameter MLP cVAE of ``benchmarks/speed.py``'s ``mlp``, one local epoch over 200
examples per client)::

    --clients 300 --fraction 0.3334 --set task.name=cvae \
        "task.params={batch_size: 20, architecture: mlp, hidden: 4, latent_dim: 4}" \
        data.partition.kind=iid "data.partition.params={}" \
        federation.local_steps=null federation.local_epochs=1.0

or the tiny table workload (TVAE of 6,524 parameters on statsmodels' randhie, one
local epoch in batches of 50: about 160 rows a client at 100 clients, 16 at 1,000)::

    --clients 100 --fraction 1.0 --set "data.sources=[randhie]" \
        "data.partition={kind: table_dirichlet, params: {alpha: 100, min_size: 5}}" \
        task.name=tvae \
        "task.params={batch_size: 50, hidden: 32, latent_dim: 8, keep_optimizer: false}" \
        federation.local_steps=null federation.local_epochs=1.0

Flower's simulation needs Ray, kept out of fedgen's own environment::

    python -m venv /work/flwrsim && /work/flwrsim/bin/pip install torch==2.13.0 \\
        && /work/flwrsim/bin/pip install -e . "flwr[simulation]==1.41.0"
    /work/flwrsim/bin/python benchmarks/flower_simulation.py --clients 20 --rounds 4
"""

from __future__ import annotations

import argparse
import itertools
import json
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import torch

from fedgen.config import PREVIOUS_DEFAULT_EXPERIMENT, load_config
from fedgen.experiment import run_experiment
from fedgen.report.results_table import ResultsTable

ROOT = Path(__file__).resolve().parents[1]
COLUMNS = [
    "framework",
    "clients",
    "cohort",
    "rounds",
    "first_round_s",
    "later_round_s",
    "updates_per_s",
    "total_s",
]
NOTES = [
    "The default cGAN's recipe (configs/fmnist_cgan.yaml: Fashion-MNIST, Dirichlet 0.5, "
    "30 local steps of batch 64) with the overrides below, if any; no evaluation, one "
    "torch thread per worker. Flower 1.41's "
    "simulation runtime (Ray backend, 1 CPU per ClientApp actor) runs fedgen's own task "
    "and shards in its ClientApp (benchmarks/flower_sim_app.py) and Flower's FedAvg; "
    "fedgen runs its own backends. Same clients, steps and cohort size; the cohorts "
    "themselves are drawn by each framework's sampler.",
    "first_round_s includes starting the workers and loading the shards; later_round_s is "
    "the mean of the other rounds, and updates_per_s = cohort / later_round_s. Wall "
    "seconds on a shared 2-core machine: compare rows of one run.",
]


def recipe_items(args: argparse.Namespace) -> list[str]:
    return [
        # The cGAN as this table's earlier rows ran it (30 local steps of 64).
        *PREVIOUS_DEFAULT_EXPERIMENT,
        *args.overrides,
        f"data.num_clients={args.clients}",
        f"federation.rounds={args.rounds}",
        f"strategy.params={{fraction: {args.fraction}, min_clients: 1}}",
        "eval.every=0",
        "eval.final=false",
        f"threads={args.threads}",
        "ledger=false",
    ]


#: fedgen's rows: framework name -> (backend, its params beyond the worker count).
FEDGEN = {
    "inprocess": ("inprocess", None),
    "vectorized": ("vectorized", None),
    "process_pool": ("process_pool", ""),
    # One worker per core, each training its share of a round's clients with vmap.
    "process_pool_vectorized": ("process_pool", ", vectorize: true"),
}


def fedgen_row(args: argparse.Namespace, framework: str, out: Path) -> dict[str, Any]:
    """One run of one of fedgen's backends; per-round seconds from its metrics."""
    backend, extra = FEDGEN[framework]
    params = [] if extra is None else [f"backend.params={{workers: {args.workers}{extra}}}"]
    cfg = load_config(
        ROOT / "configs/fmnist_cgan.yaml",
        [*recipe_items(args), f"backend.name={backend}", *params, f"name=speed-{framework}"],
    )
    seconds, cohort, total = timed_run(cfg, out / framework)
    return _row(f"fedgen {framework}", args, cohort, seconds, total)


def timed_run(cfg: Any, run_dir: Path) -> tuple[list[float], int, float]:
    """Run ``cfg`` into ``run_dir``: each round's seconds, the last cohort, the wall total."""
    t0 = time.perf_counter()
    run_experiment(cfg, run_dir, progress=False)
    total = time.perf_counter() - t0
    lines = (run_dir / "metrics.jsonl").read_text().splitlines()
    seconds = [json.loads(line)["seconds"] for line in lines]
    return seconds, json.loads(lines[-1])["clients"], total


def round_figures(cohort: int, seconds: list[float], total: float) -> dict[str, Any]:
    """First-round and later-round seconds, updates per second in the later ones, total."""
    later = statistics.mean(seconds[1:]) if len(seconds) > 1 else float("nan")
    return {
        "first_round_s": seconds[0],
        "later_round_s": later,
        "updates_per_s": cohort / later,
        "total_s": total,
    }


def flower_row(args: argparse.Namespace, out: Path) -> dict[str, Any]:
    """One run of Flower's simulation runtime over fedgen's task and shards."""
    from flwr.simulation import run_simulation

    sys.path.insert(0, str(ROOT / "benchmarks"))
    from flower_sim_app import client, server

    cfg = load_config(ROOT / "configs/fmnist_cgan.yaml", recipe_items(args))
    times = out / "flower_times.txt"
    os.environ.update(
        FEDGEN_SIM_RECIPE=json.dumps(cfg.model_dump(mode="json")),
        FEDGEN_SIM_FRACTION=str(args.fraction),
        FEDGEN_SIM_ROUNDS=str(args.rounds),
        FEDGEN_SIM_TIMES=str(times),
        # Ray's workers import the apps' module by name.
        PYTHONPATH=os.pathsep.join([str(ROOT / "benchmarks"), str(ROOT / "src")]),
    )
    t0 = time.perf_counter()
    run_simulation(
        server_app=server,
        client_app=client,
        num_supernodes=args.clients,
        backend_config={
            "client_resources": {"num_cpus": 1, "num_gpus": 0.0},
            "init_args": {"num_cpus": args.workers},
        },
    )
    total = time.perf_counter() - t0
    stamps = [float(x) for x in times.read_text().split()]
    seconds = [b - a for a, b in itertools.pairwise(stamps)]
    cohort = max(1, round(args.fraction * args.clients))
    return _row("flower simulation (ray)", args, cohort, seconds, total)


def _row(
    name: str, args: argparse.Namespace, cohort: int, seconds: list[float], total: float
) -> dict[str, Any]:
    return {
        "framework": name,
        "clients": args.clients,
        "cohort": cohort,
        "rounds": len(seconds),
        **round_figures(cohort, seconds, total),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--clients", type=int, default=20)
    parser.add_argument("--fraction", type=float, default=0.5)
    parser.add_argument("--rounds", type=int, default=4)
    parser.add_argument("--workers", type=int, default=os.cpu_count() or 2)
    parser.add_argument(
        "--frameworks",
        nargs="*",
        default=["flower", "process_pool", "inprocess", "vectorized", "process_pool_vectorized"],
        choices=["flower", *FEDGEN],
    )
    parser.add_argument(
        "--threads",
        type=int,
        default=1,
        help="torch threads of each fedgen process (Flower's actors keep one)",
    )
    parser.add_argument("--set", nargs="*", default=[], dest="overrides")
    parser.add_argument("--table", type=Path, default=ROOT / "benchmarks/results/speed.md")
    args = parser.parse_args()
    torch.set_num_threads(1)
    table = ResultsTable(args.table, COLUMNS)
    notes = [*NOTES, f"recipe overrides: {' '.join(args.overrides)}"] if args.overrides else NOTES
    notes += [f"pinned to CPUs {sorted(os.sched_getaffinity(0))}, {args.workers} worker(s)"]
    if args.threads != 1:
        # The machine line above counts this script's own thread, not the runs'.
        notes += [f"fedgen's runs: {args.threads} torch threads a process"]
    table.start("flower_simulation", notes)
    with tempfile.TemporaryDirectory() as tmp:
        for framework in args.frameworks:
            if framework == "flower":
                row = flower_row(args, Path(tmp))
            else:
                row = fedgen_row(args, framework, Path(tmp))
            table.append(row)
            print(json.dumps(row), flush=True)


if __name__ == "__main__":
    main()
