"""Local training in float32 against bfloat16 autocast (``task.params.compute_dtype``).

For each recipe, a fresh process (pinned where this script is pinned, one torch thread
unless ``--threads``) builds the experiment with the dtype, runs one warm-up round of
``--steps`` local steps, then ``--rounds`` timed rounds, and reports the median wall
and CPU seconds per local step of one client (a round's time over its clients' steps).
The two dtypes alternate per recipe (float32, bfloat16, float32, ...) with
``--repeats``, so that a shared machine's load falls on both; the speed-up is the
float32 row's time over the bfloat16 row's in the same repeat. A row also gives the
first client's loss after the timed rounds, a sanity check, not a quality figure.

    taskset -c 0 .venv/bin/python benchmarks/compute_dtype.py \
        [--recipes split-faithful cgan ddpm lm-lora] [--steps 3] [--rounds 2]

Rows are appended one at a time to ``benchmarks/results/speed.md``.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import time
from pathlib import Path
from typing import Any

from child_run import reply, run_child

ROOT = Path(__file__).resolve().parents[1]
#: Recipe -> (config, overrides). Two clients a round keep a round short; the split
#: recipes train S1's 12 clients jointly (its iteration is all of them).
RECIPES: dict[str, tuple[str, list[str]]] = {
    "split-faithful": ("configs/huscf/s1.yaml", []),
    "split-light": (
        "configs/huscf/s1.yaml",
        ["task.params.architecture=light", "task.params.aux_weight=1.0"],
    ),
    "cgan": (
        "configs/fmnist_cgan.yaml",
        ["backend.name=inprocess", "strategy.params.fraction=0.2"],
    ),
    "ddpm": ("configs/mnist_ddpm.yaml", ["backend.name=inprocess", "strategy.params.fraction=0.2"]),
    "lm-lora": (
        "configs/lm_lora_fortunes.yaml",
        ["backend.name=inprocess", "strategy.params.fraction=0.25"],
    ),
}
DTYPES = ("float32", "bfloat16")
COLUMNS = [
    "recipe",
    "compute dtype",
    "threads",
    "clients / round",
    "s / client step",
    "CPU s / client step",
    "speed-up",
    "loss after",
    "peak RSS MB",
]


def measure(recipe: str, dtype: str, threads: int, steps: int, rounds: int) -> dict[str, Any]:
    """One measurement in this process."""
    import resource

    import torch

    from fedgen.config import load_config
    from fedgen.experiment import build_experiment

    path, extra = RECIPES[recipe]
    overrides = [
        *extra,
        "federation.local_epochs=null",
        f"federation.local_steps={steps}",
        "eval.every=0",
        "eval.final=false",
        f"threads={threads}",
        "ledger=false",
        f"task.params.compute_dtype={dtype}",
    ]
    fed = build_experiment(load_config(ROOT / path, overrides)).federation
    torch.set_num_threads(threads)
    fed.run_round(0)  # warm-up
    walls, cpus, clients, loss = [], [], 0, None
    for r in range(1, rounds + 1):
        t0, c0 = time.perf_counter(), time.process_time()
        record = fed.run_round(r)
        wall, cpu = time.perf_counter() - t0, time.process_time() - c0
        # A split round trains its clients jointly: an iteration is one step of each.
        clients = int(record.metrics.get("clients", 0)) or 1
        split = recipe.startswith("split")
        per = steps if split else steps * clients
        walls.append(wall / per)
        cpus.append(cpu / per)
        losses = [v for k, v in record.metrics.items() if k.startswith("loss/")]
        loss = losses[0] if losses else None
    return {
        "wall": statistics.median(walls),
        "cpu": statistics.median(cpus),
        "clients": clients,
        "loss": loss,
        "rss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
    }


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--recipes", nargs="+", default=list(RECIPES), choices=list(RECIPES))
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--steps", type=int, default=3, help="local steps per round")
    parser.add_argument("--rounds", type=int, default=2, help="timed rounds")
    parser.add_argument("--repeats", type=int, default=1, help="alternate the dtypes this often")
    parser.add_argument("--out", type=Path, default=ROOT / "benchmarks/results/speed.md")
    parser.add_argument("--child", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.child:
        reply(measure(**json.loads(args.child)))
        return

    sys.path.insert(0, str(ROOT / "src"))
    from fedgen.report.results_table import ResultsTable

    table = ResultsTable(args.out, COLUMNS)
    table.start(
        "compute_dtype",
        notes=[
            f"local training in float32 against bfloat16 autocast; {args.steps} local steps a "
            f"round, one warm-up round, {args.rounds} timed rounds (median); a split recipe's "
            "step is one joint iteration of S1's 12 clients",
            f"pinned to CPUs {sorted(os.sched_getaffinity(0))}; speed-up: the float32 row's "
            "s / client step over this row's, same recipe and repeat",
        ],
    )
    for _ in range(args.repeats):
        for recipe in args.recipes:
            base: dict[str, Any] | None = None
            for dtype in DTYPES:
                spec = {
                    "recipe": recipe,
                    "dtype": dtype,
                    "threads": args.threads,
                    "steps": args.steps,
                    "rounds": args.rounds,
                }
                print(f"== {spec}", flush=True)
                try:
                    out = run_child(__file__, spec, ROOT / "src")
                except RuntimeError as exc:
                    print(f"   failed: {exc}", flush=True)
                    continue
                if dtype == "float32":
                    base = out
                row = {
                    "recipe": recipe,
                    "compute dtype": dtype,
                    "threads": args.threads,
                    "clients / round": out["clients"],
                    "s / client step": out["wall"],
                    "CPU s / client step": out["cpu"],
                    # None ("-") when this repeat's float32 run failed: no baseline.
                    "speed-up": base["wall"] / out["wall"] if base else None,
                    "loss after": out["loss"],
                    "peak RSS MB": out["rss_mb"],
                }
                print("   " + table.append(row), flush=True)


if __name__ == "__main__":
    main()
