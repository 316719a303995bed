"""Split-learning speed on HuSCF-GAN's S1: iterations per second, side by side across commits.

Issue 12's split goal is "at least 3x today's split-backend iterations per second on
S1". This script measures the split backend on ``configs/huscf/s1.yaml`` (12 MNIST
clients of 750 images, batch 64, the exact latency cuts) for each network:

- ``light``: fedgen's variant as ``benchmarks/huscf/table.py``'s ``fedgen_best`` trains
  it (width 0.25, GroupNorm, the AC-GAN class head);
- ``faithful``: the published network (full width, BatchNorm).

Each (source tree, network, threads) runs in a fresh process, pinned where this script
is pinned (``taskset``): one warm-up round of ``--steps`` iterations, one round under
``torch.utils.flop_counter`` (the FLOPs of an iteration: every convolution and matmul of
all clients and the server, forward and backward), then ``--rounds`` timed rounds. A
row reports the median wall and CPU seconds per iteration, iterations per second, the
achieved GFLOP/s as a fraction of the sgemm GFLOP/s the same process measured with the
same threads (the roofline fraction), and the speed-up against the first tree's row of
the same network and threads. ``--trees`` names source trees (e.g. ``git worktree``
checkouts of an older commit): the children import ``fedgen`` from ``<tree>/src`` and
read ``<tree>/configs``, and the rows name each tree's commit. ``--repeats`` alternates
the trees (A B A B) so that a shared machine's load falls on both. ``--versus NETWORK``
compares networks instead of trees: each row's speed-up is against that network's row of
the same tree and threads in the same repeat (list it first in ``--archs``); the
``_bf16`` networks compute in bfloat16, the ``_nhwc`` ones in channels-last layout.

    taskset -c 0 .venv/bin/python benchmarks/split_speed.py --trees /tmp/base . \
        [--archs light faithful] [--threads 1] [--steps 5] [--rounds 2]
    taskset -c 0,1 .venv/bin/python benchmarks/split_speed.py --threads 2 --repeats 3 \
        --archs faithful_bf16 faithful_bf16_nhwc --versus faithful_bf16

Rows are appended one at a time to ``benchmarks/results/speed.md``.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import statistics
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

from child_run import reply, run_child

ROOT = Path(__file__).resolve().parents[1]
#: Network -> overrides of S1's recipe (light: table.py's fedgen_best network).
ARCHS: dict[str, list[str]] = {
    "light": ["task.params.architecture=light", "task.params.aux_weight=1.0"],
    "faithful": [],
    "faithful_nhwc": ["task.params.channels_last=true"],
    "faithful_bf16": ["task.params.compute_dtype=bfloat16"],
    "faithful_bf16_nhwc": ["task.params.compute_dtype=bfloat16", "task.params.channels_last=true"],
}
COLUMNS = [
    "commit",
    "network",
    "threads",
    "s / iteration",
    "CPU s / iteration",
    "iterations / s",
    "speed-up",
    "GFLOP / iteration",
    "GFLOP/s",
    "sgemm GFLOP/s",
    "roofline",
    "peak RSS MB",
]


def sgemm_gflops(size: int = 1024, seconds: float = 1.0) -> float:
    """float32 matmul GFLOP/s with this process's torch threads (best batch of four)."""
    import torch

    a, b = torch.randn(size, size), torch.randn(size, size)
    a @ b
    best, spent = 0.0, 0.0
    while spent < seconds:
        t0 = time.perf_counter()
        for _ in range(4):
            a @ b
        dt = time.perf_counter() - t0
        spent += dt
        best = max(best, 4 * 2 * size**3 / dt / 1e9)
    return best


def measure(tree: str, arch: str, threads: int, steps: int, rounds: int) -> dict[str, Any]:
    """One measurement in this process (imported from ``tree``'s ``src``)."""
    import torch
    from torch.utils.flop_counter import FlopCounterMode

    from fedgen.config import load_config
    from fedgen.experiment import build_experiment

    overrides = [
        *ARCHS[arch],
        "federation.local_epochs=null",
        f"federation.local_steps={steps}",
        "eval.every=0",
        "eval.final=false",
        f"threads={threads}",
        "ledger=false",
    ]
    cfg = load_config(Path(tree) / "configs/huscf/s1.yaml", overrides)
    fed = build_experiment(cfg).federation
    torch.set_num_threads(threads)
    fed.run_round(0)  # warm-up
    with FlopCounterMode(display=False) as counter:
        fed.run_round(1)
    flops = counter.get_total_flops() / steps
    walls, cpus = [], []
    for r in range(2, rounds + 2):
        t0, c0 = time.perf_counter(), time.process_time()
        fed.run_round(r)
        walls.append((time.perf_counter() - t0) / steps)
        cpus.append((time.process_time() - c0) / steps)
    gemm = sgemm_gflops()
    wall = statistics.median(walls)
    return {
        "wall": wall,
        "cpu": statistics.median(cpus),
        "gflop": flops / 1e9,
        "gflops": flops / wall / 1e9,
        "sgemm": gemm,
        "rss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
    }


def tree_commit(tree: Path) -> str:
    """The short commit of a source tree, ``+dirty`` if its ``src`` has changes."""

    def git(*cmd: str) -> str:
        return subprocess.run(
            ["git", "-C", str(tree), *cmd], capture_output=True, text=True, check=False
        ).stdout.strip()

    head = git("rev-parse", "--short", "HEAD") or "unknown"
    return head + ("+dirty" if git("status", "--porcelain", "--", "src") else "")


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--trees", nargs="+", type=Path, default=[ROOT])
    parser.add_argument("--archs", nargs="+", default=["light", "faithful"], choices=list(ARCHS))
    parser.add_argument("--threads", nargs="+", type=int, default=[1])
    parser.add_argument("--steps", type=int, default=5, help="iterations per round")
    parser.add_argument("--rounds", type=int, default=2, help="timed rounds")
    parser.add_argument("--repeats", type=int, default=1, help="alternate the trees this often")
    parser.add_argument(
        "--versus",
        choices=list(ARCHS),
        help="speed-up against this network's row (same tree, threads and repeat), not the "
        "first tree's",
    )
    parser.add_argument("--out", type=Path, default=ROOT / "benchmarks/results/speed.md")
    parser.add_argument("--child", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.versus and args.archs[0] != args.versus:
        parser.error(f"--versus {args.versus}: list it first in --archs")
    if len(set(args.archs)) != len(args.archs):
        parser.error("--archs: name each network once (use --repeats to measure it again)")
    if args.child:
        reply(measure(**json.loads(args.child)))
        return

    sys.path.insert(0, str(ROOT / "src"))
    from fedgen.report.results_table import ResultsTable

    trees = [t.resolve() for t in args.trees]
    commits = {t: tree_commit(t) for t in trees}
    table = ResultsTable(args.out, COLUMNS)
    table.start(
        "split_speed",
        notes=[
            f"HuSCF-GAN S1 (configs/huscf/s1.yaml: 12 clients, batch 64, exact cuts), "
            f"networks {', '.join(args.archs)}; {args.steps} iterations a round, one warm-up "
            f"round, one counted round, {args.rounds} timed rounds (median); trees "
            + ", ".join(f"{commits[t]} ({t})" for t in trees),
            f"pinned to CPUs {sorted(os.sched_getaffinity(0))}; speed-up: against the row of "
            + (
                f"network {args.versus} with the same tree and threads in the same repeat"
                if args.versus
                else f"{commits[trees[0]]} with the same network and threads in the same repeat"
            ),
        ],
    )
    for _ in range(args.repeats):
        versus: dict[tuple[Path, int], dict[str, Any]] = {}
        for arch in args.archs:
            for threads in args.threads:
                base: dict[str, Any] | None = None
                for tree in trees:
                    spec = {
                        "tree": str(tree),
                        "arch": arch,
                        "threads": threads,
                        "steps": args.steps,
                        "rounds": args.rounds,
                    }
                    print(f"== {spec}", flush=True)
                    try:
                        out = run_child(__file__, spec, Path(spec["tree"]) / "src")
                    except RuntimeError as exc:
                        print(f"   failed: {exc}", flush=True)
                        continue
                    # No baseline (its run failed): no speed-up, rather than a row against itself.
                    if args.versus:
                        if arch == args.versus:
                            versus[tree, threads] = out
                        base = versus.get((tree, threads))
                    elif tree == trees[0]:
                        base = out
                    row = {
                        "commit": commits[tree],
                        "network": arch,
                        "threads": threads,
                        "s / iteration": out["wall"],
                        "CPU s / iteration": out["cpu"],
                        "iterations / s": 1 / out["wall"],
                        "speed-up": base["wall"] / out["wall"] if base else None,
                        "GFLOP / iteration": out["gflop"],
                        "GFLOP/s": out["gflops"],
                        "sgemm GFLOP/s": out["sgemm"],
                        "roofline": f"{out['gflops'] / out['sgemm']:.0%}",
                        "peak RSS MB": out["rss_mb"],
                    }
                    print("   " + table.append(row), flush=True)


if __name__ == "__main__":
    main()
