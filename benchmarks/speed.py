"""Simulation speed: the same federated work on each backend, side by side in one run.

Workloads (both real Fashion-MNIST, iid shards, FedAvg, every client of the cohort
sampled from a fixed population):

- ``tiny``: the cGAN at its smallest (widths 8, latent 8, label embedding 4: about
  22k parameters, the task's GroupNorm needs widths of 8 or more), one local epoch of
  batches of 20 over 200 examples per client (10 steps), cohorts drawn from 300
  clients (1,000 clients of 60 examples, 3 steps, for a cohort of 1,000).
- ``mlp``: issue 12's "network of a few thousand parameters": the cVAE with one
  hidden layer of 4 units each way (``architecture: mlp``, latent 4: 7,200
  parameters), the same data and budget as ``tiny`` (one local epoch of batches of 20
  over 200 examples per client; 60 examples at a cohort of 1,000). Its step is a few
  MFLOP, so the simulator's own cost per client update is what the row measures.
- ``cgan``: the default cGAN (widths 32, latent 64: 0.35M parameters), 5 local steps
  of 10 examples, cohorts drawn from 1,000 clients (issue 12's setting).
- ``tvae``, ``ctgan``: the table synthesizers at their own sizes (TVAE 128-wide, CTGAN
  256-wide with 128 noise dimensions), each client keeping its Adam between rounds (their
  default), 5 local steps of batches of 50 rows of statsmodels' ``fair`` survey, split
  near-iid (Dirichlet 100) over 100 clients (the cohort's size when larger).
- ``ddpm``: the diffusion recipe's UNet (``configs/fmnist_ddpm.yaml``: width 16, 1,000
  timesteps), the same budget as ``cgan`` (5 local steps of 10 examples, 1,000 clients).

Each (workload, cohort, backend) runs in a fresh process pinned where this script is
pinned (``taskset``), torch on one thread: one warm-up round (worker start-up, first
vmap), then ``--rounds`` timed rounds. A row reports the median seconds per round
(wall) and client updates per second; the CPU seconds of that process per round (the
figure the other engineers' load on this shared machine disturbs least; the process
pool's workers are other processes, so its CPU column is empty); peak RSS (the
process, plus its largest worker for the pool); the matmul FLOPs of one client update
(``torch.utils.flop_counter``: convolutions and matmuls of ``train_local``); the
achieved GFLOP/s (FLOPs x updates / wall seconds) as a fraction of the sgemm GFLOP/s
(1024 x 1024, float32, one thread) that the same process measured right after its
rounds: the roofline fraction; "roofline (CPU)" is the same per CPU second of this
process (updates' FLOPs / CPU seconds against sgemm FLOPs / CPU seconds). Speed-ups
are against the sequential ``inprocess`` row of the same workload and cohort, measured
just before (wall and CPU).

The process pool runs one worker: the run is pinned to one core, and a second worker
would only share it.

With ``--memory-clients 10000`` the ``--memory-workload`` (``tiny``) also runs once at
that cohort on the vectorized backend (one warm-up round, one timed), for its peak
RSS: fedgen's memory is O(model), not O(cohort) (FedAvg sums updates as they arrive,
backends yield them one at a time, a vectorized chunk is bounded by its memory budget).

    taskset -c 1 .venv/bin/python benchmarks/speed.py [--clients 10 100 1000] [--rounds 2]

Rows are appended one at a time to ``benchmarks/results/speed.md``.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import statistics
import time
from pathlib import Path
from typing import Any

from child_run import reply, run_child
from torch.utils._python_dispatch import TorchDispatchMode
from torch.utils.flop_counter import flop_registry

ROOT = Path(__file__).resolve().parents[1]
BACKENDS = ["inprocess", "vectorized", "process_pool"]
COLUMNS = [
    "workload",
    "params",
    "clients / round",
    "backend",
    "s / round",
    "client updates / s",
    "speed-up (wall)",
    "CPU s / round",
    "speed-up (CPU)",
    "peak RSS MB",
    "GFLOP / update",
    "GFLOP/s",
    "sgemm GFLOP/s",
    "roofline",
    "roofline (CPU)",
]


def recipe(workload: str, cohort: int, backend: str, data_dir: str | None) -> list[str]:
    """The dotted overrides of one measurement's experiment."""
    name = "cgan"
    if workload == "tiny":
        population = max(cohort, 300)
        task = (
            "{batch_size: 20, generator_width: 8, discriminator_width: 8, latent_dim: 8, "
            "embed_dim: 4}"
        )
        budget = ["federation.local_steps=null", "federation.local_epochs=1.0"]
    elif workload == "mlp":
        name, population = "cvae", max(cohort, 300)
        task = "{batch_size: 20, architecture: mlp, hidden: 4, latent_dim: 4}"
        budget = ["federation.local_steps=null", "federation.local_epochs=1.0"]
    elif workload == "ddpm":
        name, population = "ddpm", max(cohort, 1000)
        task = "{batch_size: 10, width: 16, lr: 0.001}"
        budget = ["federation.local_steps=5"]
    elif workload in ("tvae", "ctgan"):
        name, population = workload, max(cohort, 100)
        task = "{batch_size: 50}"  # the task's own networks; kept Adams (its default)
        budget = ["federation.local_steps=5"]
    else:
        population = max(cohort, 1000)
        task = "{batch_size: 10}"
        budget = ["federation.local_steps=5"]
    backend_params = {"process_pool": "{workers: 1, threads: 1}"}.get(backend, "{}")
    if workload in ("tvae", "ctgan"):
        # statsmodels' affairs survey (6,366 rows), near-iid shards of 50 rows or more.
        data = [
            "data.sources=[fair]",
            "data.partition.kind=table_dirichlet",
            "data.partition.params={alpha: 100, min_size: 5}",
        ]
    else:
        data = [
            "data.sources=[fashion-mnist]",
            "data.partition.kind=iid",
            "data.partition.params={}",
        ]
    return [
        *data,
        *([f"data.data_dir={data_dir}"] if data_dir else []),
        f"data.num_clients={population}",
        f"task.name={name}",
        f"task.params={task}",
        f"strategy.params={{fraction: {cohort / population}, min_clients: 2}}",
        "federation.rounds=1000",
        *budget,
        f"backend.name={backend}",
        f"backend.params={backend_params}",
        "ledger=false",
        "threads=1",
    ]


def sgemm_gflops(size: int = 1024, seconds: float = 1.0) -> tuple[float, float]:
    """float32 matmul GFLOP/s on this thread per wall and per CPU second (best batches)."""
    import torch

    a, b = torch.randn(size, size), torch.randn(size, size)
    a @ b
    best, best_cpu, spent = 0.0, 0.0, 0.0
    while spent < seconds:
        t0, c0 = time.perf_counter(), time.process_time()
        for _ in range(4):
            a @ b
        dt, dc = time.perf_counter() - t0, time.process_time() - c0
        spent += dt
        best = max(best, 4 * 2 * size**3 / dt / 1e9)
        best_cpu = max(best_cpu, 4 * 2 * size**3 / max(dc, 1e-9) / 1e9)
    return best, best_cpu


class MatmulFlops(TorchDispatchMode):
    """FLOPs of the ops ``torch.utils.flop_counter`` knows (matmuls, convolutions), counted
    with its formulas but without ``FlopCounterMode``'s module tracking, whose backward
    hooks refuse CTGAN's gradient penalty (``autograd.grad`` with ``create_graph``)."""

    def __init__(self) -> None:
        super().__init__()
        self.total = 0

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):  # type: ignore[no-untyped-def]
        kwargs = kwargs or {}
        out = func(*args, **kwargs)
        formula = flop_registry.get(func._overloadpacket)
        if formula is not None:
            self.total += formula(*args, **kwargs, out_val=out)
        return out


def measure(workload: str, cohort: int, backend: str, rounds: int) -> dict[str, Any]:
    """One measurement, in this process: the figures of a row."""
    import psutil
    import torch

    from fedgen.config import load_config
    from fedgen.engine.backends.base import LocalWork
    from fedgen.engine.backends.local_training import local_steps_for
    from fedgen.experiment import build_experiment

    torch.set_num_threads(1)
    cfg = load_config(None, recipe(workload, cohort, backend, os.environ.get("FEDGEN_DATA_DIR")))
    fed = build_experiment(cfg).federation
    task = fed.task
    first = fed.clients[min(fed.clients)]
    work = LocalWork(task, fed.global_state, [], fed.local_steps, fed.local_epochs)
    with MatmulFlops() as counter:
        task.load_state(fed.global_state)
        task.train_local(first, local_steps_for(work, first.num_examples), torch.Generator(), {})
    flops = counter.total
    params = sum(v.numel() for v in fed.global_state.values())
    fed.run_round(0)  # warm-up: worker start-up, first vmap
    walls, cpus = [], []
    for r in range(1, rounds + 1):
        t0, c0 = time.perf_counter(), time.process_time()
        record = fed.run_round(r)
        walls.append(time.perf_counter() - t0)
        cpus.append(time.process_time() - c0)
        if record.metrics.get("failures"):
            raise RuntimeError(f"round {r} had failures: {record.metrics.get('failed_clients')}")
    workers = [p.memory_info().rss for p in psutil.Process().children(recursive=True)]
    fed.backend.close()
    gemm, gemm_cpu = sgemm_gflops()
    rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024 + max(workers, default=0)
    wall, cpu = statistics.median(walls), statistics.median(cpus)
    return {
        "params": params,
        "wall": wall,
        "cpu": None if backend == "process_pool" else cpu,
        "updates_per_s": cohort / wall,
        "rss_mb": rss / 2**20,
        "gflop_per_update": flops / 1e9,
        "gflops": flops * cohort / wall / 1e9,
        "sgemm": gemm,
        # Per CPU second: what the other jobs on this machine disturb least.
        "roofline_cpu": None
        if backend == "process_pool"
        else flops * cohort / cpu / 1e9 / gemm_cpu,
    }


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "--workloads",
        nargs="+",
        default=["tiny", "cgan"],
        choices=["tiny", "mlp", "cgan", "ddpm", "tvae", "ctgan"],
    )
    parser.add_argument("--clients", type=int, nargs="+", default=[10, 100, 1000])
    parser.add_argument("--backends", nargs="+", default=BACKENDS)
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument(
        "--memory-clients",
        type=int,
        nargs="*",
        default=[],
        help="cohorts of --memory-workload to run once on the vectorized backend for its "
        "peak RSS (e.g. 10000), after the other rows",
    )
    parser.add_argument("--memory-workload", default="tiny", choices=["tiny", "mlp", "cgan"])
    parser.add_argument("--out", type=Path, default=ROOT / "benchmarks/results/speed.md")
    parser.add_argument("--child", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.child:
        spec = json.loads(args.child)
        reply(measure(**spec))
        return

    from fedgen.report.results_table import ResultsTable

    table = ResultsTable(args.out, COLUMNS)
    table.start(
        "speed",
        notes=[
            f"workloads: {', '.join(args.workloads)}; cohorts {args.clients}; "
            f"{args.rounds} timed rounds after one warm-up, median; see the script's docstring",
            f"pinned to CPUs {sorted(os.sched_getaffinity(0))} (taskset), one torch thread, "
            "on a machine shared with other engineers' jobs: compare rows of one "
            "(workload, cohort) only, and prefer the CPU columns",
            "vectorized: default params (chunk_size as in its Params); process_pool: 1 worker",
        ],
    )
    runs = [(w, c, args.backends, args.rounds) for w in args.workloads for c in args.clients]
    runs += [(args.memory_workload, c, ["vectorized"], 1) for c in args.memory_clients]
    for workload, cohort, backends, rounds in runs:
        base: dict[str, Any] | None = None
        for backend in backends:
            spec = {"workload": workload, "cohort": cohort, "backend": backend}
            print(f"== {spec}", flush=True)
            try:
                out = run_child(__file__, {**spec, "rounds": rounds})
            except RuntimeError as exc:
                print(f"   failed: {exc}", flush=True)
                table.append(
                    {
                        "workload": workload,
                        "clients / round": cohort,
                        "backend": f"{backend} (failed: {str(exc)[:80]})",
                    }
                )
                continue
            if backend == "inprocess":
                base = out
            row = {
                "workload": workload,
                "params": out["params"],
                "clients / round": cohort,
                "backend": backend,
                "s / round": out["wall"],
                "client updates / s": out["updates_per_s"],
                "speed-up (wall)": None if base is None else base["wall"] / out["wall"],
                "CPU s / round": out["cpu"],
                "speed-up (CPU)": (
                    None
                    if base is None or out["cpu"] is None or base["cpu"] is None
                    else base["cpu"] / out["cpu"]
                ),
                "peak RSS MB": out["rss_mb"],
                "GFLOP / update": out["gflop_per_update"],
                "GFLOP/s": out["gflops"],
                "sgemm GFLOP/s": out["sgemm"],
                "roofline": f"{out['gflops'] / out['sgemm']:.0%}",
                "roofline (CPU)": (
                    None if out["roofline_cpu"] is None else f"{out['roofline_cpu']:.0%}"
                ),
            }
            print("   " + table.append(row), flush=True)


if __name__ == "__main__":
    main()
