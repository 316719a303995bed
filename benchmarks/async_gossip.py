"""Time to quality in simulated time: FedBuff and gossip against synchronous FedAvg.

The cGAN on Fashion-MNIST, ``--clients`` clients whose step times are heavy-tailed
(lognormal, ``--sigma``, drawn from the root seed: ``federation.clock``). Every mode
trains on the same simulated clock (no sleeping) and is evaluated on the same grid
of simulated times (every synchronous round's duration): the Frechet distance of
1,000 class-balanced samples to 1,000 real test images in the feature space of the
evaluator's classifier (``fedgen.eval``), cheap enough to take at every grid point;
TSTR (train on 10,000 synthetic, test on the real test set) is taken once, where a
run stops.

1. ``sync``: FedAvg, every client every round, ``--rounds`` rounds; its last
   Frechet distance is the target (the synchronous run's final quality).
2. ``fedbuff``: FedBuff, every client in flight, a server step every ``--buffer``
   arrivals, staleness exponent 0.5.
3. ``gossip``: D-PSGD on a ring, Metropolis weights.

FedBuff and gossip stop at the first grid point whose Frechet distance is at most
the target, or at the synchronous run's total simulated time. The speed-up is the
synchronous run's time to its own final quality (its first grid point at or under
the target) over the mode's. No EMA anywhere: gossip has no server to keep one.
One row per mode is appended to ``benchmarks/results/async.md`` as it finishes.

``--metric tstr`` takes TSTR itself on the grid instead (a small CNN trained on 5,000
synthetic images for 2 epochs, scored on the real test set; ~20x the cost of a Frechet
distance, so use a coarser grid: ``--eval-every 4`` synchronous rounds), with the
synchronous run's last TSTR as the target.

    .venv/bin/python benchmarks/async_gossip.py [--rounds 40] [--local-steps 10] [--metric tstr]
"""

from __future__ import annotations

import argparse
import math
import time
from pathlib import Path
from typing import Any

import torch

from fedgen.config import load_config
from fedgen.engine.federation import Callback, Federation, RoundRecord
from fedgen.eval.evaluator import balanced_labels
from fedgen.eval.frechet import frechet_distance
from fedgen.eval.tstr import train_synthetic_test_real
from fedgen.experiment import Experiment, build_experiment, make_evaluator
from fedgen.report.results_table import ResultsTable
from fedgen.seeding import derive_seed, torch_generator

ROOT = Path(__file__).resolve().parents[1]
COLUMNS = [
    "commit",
    "mode",
    "data",
    "partition",
    "clients",
    "speeds",
    "schedule",
    "rounds run",
    "sim s at stop",
    "metric",
    "target",
    "sim s to target",
    "speed-up vs sync",
    "FD at stop",
    "best FD",
    "TSTR at stop",
    "mean staleness",
    "client jobs",
    "wall s",
]


class TimeGrid(Callback):
    """Evaluates quality whenever simulated time passes the next grid point; stops the
    run at the target or the horizon.

    ``metric`` ``fd``: the Frechet distance (lower is better); ``tstr``: TSTR accuracy
    (higher is better), with the Frechet distance recorded beside it.
    """

    def __init__(
        self, exp_ref: dict[str, Experiment], evaluator: Any, step: float, metric: str
    ) -> None:
        self.exp_ref = exp_ref
        self.evaluator = evaluator
        self.step = step
        self.next = step
        self.metric = metric
        self.target: float | None = None
        self.horizon = math.inf
        self.points: list[tuple[float, float, int]] = []  # (sim s, metric, round)
        self.fds: list[float] = []
        self.jobs = 0
        self.staleness: list[float] = []
        #: Wall-clock budget of the run (the benchmark must end); hit: the row says so.
        self.deadline = math.inf
        self.out_of_time = False

    def reached(self, value: float) -> bool:
        """Whether ``value`` is at least as good as the target."""
        return self.target is not None and as_good(value, self.target, self.metric)

    def on_round_end(self, fed: Federation, record: RoundRecord) -> None:
        m = record.metrics
        self.jobs += int(m.get("clients", 0))
        if "staleness_mean" in m:
            self.staleness.append(float(m["staleness_mean"]))
        now = float(m["sim_time"])
        if time.perf_counter() > self.deadline:
            self.out_of_time = True
            fed.rounds = fed.next_round
        if now + 1e-9 < self.next and not self.out_of_time:
            return
        while self.next <= now + 1e-9:
            self.next += self.step
        fd = frechet(self.exp_ref["exp"], self.evaluator)
        value = fd if self.metric == "fd" else tstr(self.exp_ref["exp"], self.evaluator)
        self.fds.append(fd)
        self.points.append((now, value, record.round))
        print(
            f"  round {record.round:5d}  sim {now:9.1f} s  FD {fd:7.2f}  {self.metric} {value:.4f}",
            flush=True,
        )
        if self.reached(value) or now >= self.horizon - 1e-9:
            fed.rounds = fed.next_round  # stop after this round: the loop checks it


def as_good(value: float, target: float, metric: str) -> bool:
    """Whether ``value`` of ``metric`` is at least as good as ``target``."""
    return value <= target if metric == "fd" else value >= target


def frechet(exp: Experiment, evaluator: Any) -> float:
    """Frechet distance of 1,000 class-balanced samples of the current global model."""
    task = exp.federation.load_global_into_task()
    labels = balanced_labels(
        evaluator.num_quality_samples, evaluator.num_classes, torch_generator(0, "fd-labels")
    )
    gen = torch_generator(exp.config.seed, "fd-samples")
    with torch.no_grad():
        images = torch.cat([task.sample(chunk, gen) for chunk in labels.split(500)])
    # The evaluator's real test features (the same 1,000 images for every run).
    return float(
        frechet_distance(evaluator._real_test_feats, evaluator.classifier.features(images))
    )


def tstr(exp: Experiment, evaluator: Any, samples: int = 5000, epochs: int = 2) -> float:
    """TSTR accuracy: a small CNN trained on ``samples`` synthetic images, scored on the
    real test set (the evaluator's own recipe, fewer samples so it can run often)."""
    task = exp.federation.load_global_into_task()
    labels = balanced_labels(samples, evaluator.num_classes, torch_generator(0, "tstr-labels"))
    gen = torch_generator(exp.config.seed, "tstr-samples")
    with torch.no_grad():
        images = torch.cat([task.sample(chunk, gen) for chunk in labels.split(500)])
    result = train_synthetic_test_real(
        images,
        labels,
        evaluator.test.float_images(),
        evaluator.test.labels,
        evaluator.num_classes,
        epochs=epochs,
        seed=derive_seed(exp.config.seed, "bench", "tstr-classifier"),
    )
    return float(result.as_dict()["tstr_accuracy"])


def recipe(args: argparse.Namespace, mode: str) -> list[str]:
    items = [
        f"data.data_dir={args.data_dir}",
        f"data.num_clients={args.clients}",
        "backend.name=inprocess",
        "threads=1",
        "ledger=false",
        f"task.params={{batch_size: 32, generator_width: {args.width}, "
        f"discriminator_width: {args.width}}}",
        f"federation.local_steps={args.local_steps}",
        "strategy.params={fraction: 1.0, min_clients: 1}",
        f"federation.clock={{speeds: lognormal, sigma: {args.sigma}}}",
        "eval.num_quality_samples=1000",
        "eval.tstr_samples=10000",
        "eval.tstr_epochs=2",
        f"federation.mode={mode}",
    ]
    if args.partition == "iid":
        items += ["data.partition.kind=iid", "data.partition.params={}"]
    else:
        items += ["data.partition.kind=dirichlet", "data.partition.params={alpha: 0.5}"]
    if mode == "sync":
        items.append(f"federation.rounds={args.rounds}")
    else:
        items.append("federation.rounds=100000")  # stopped by TimeGrid
    if mode == "fedbuff":
        items.append(f"federation.fedbuff={{buffer_size: {args.buffer}, staleness_exponent: 0.5}}")
    if mode == "gossip":
        items.append(f"federation.gossip={{topology: {args.topology}, weights: metropolis}}")
    return items


def run_mode(
    args: argparse.Namespace, mode: str, target: float | None, horizon: float, step: float
) -> tuple[TimeGrid, Experiment, float]:
    cfg = load_config(ROOT / "configs" / "fmnist_cgan.yaml", recipe(args, mode))
    ref: dict[str, Experiment] = {}
    evaluator_holder: dict[str, Any] = {}
    exp = build_experiment(cfg)
    evaluator_holder["ev"] = make_evaluator(cfg, exp.data, exp.task.modality)
    grid = TimeGrid(ref, evaluator_holder["ev"], step, args.metric)
    grid.target, grid.horizon = target, horizon
    grid.deadline = time.perf_counter() + args.max_wall
    exp.federation.callbacks.append(grid)
    exp.evaluator = evaluator_holder["ev"]
    ref["exp"] = exp
    t0 = time.perf_counter()
    print(f"{mode}: {' '.join(recipe(args, mode))}", flush=True)
    exp.federation.run()
    return grid, exp, time.perf_counter() - t0


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--clients", type=int, default=12)
    parser.add_argument("--rounds", type=int, default=60)
    parser.add_argument("--local-steps", type=int, default=5)
    parser.add_argument("--width", type=int, default=16)
    parser.add_argument("--sigma", type=float, default=1.0)
    parser.add_argument("--buffer", type=int, default=3)
    parser.add_argument("--topology", default="ring")
    parser.add_argument("--partition", choices=["dirichlet", "iid"], default="dirichlet")
    parser.add_argument("--data-dir", default="/usr/share/datasets")
    parser.add_argument("--modes", default="sync,fedbuff,gossip")
    parser.add_argument("--metric", choices=["fd", "tstr"], default="fd")
    parser.add_argument("--max-wall", type=float, default=math.inf, help="seconds per mode")
    parser.add_argument("--eval-every", type=int, default=1, help="grid, in sync rounds")
    parser.add_argument("--table", type=Path, default=ROOT / "benchmarks/results/async.md")
    args = parser.parse_args()
    torch.set_num_threads(1)

    from fedgen.report.results_table import current_commit

    table = ResultsTable(args.table, COLUMNS)
    table.start(
        f"time to the synchronous run's final {args.metric}, {args.partition}",
        [
            f"cGAN (widths {args.width}, batch 32) on Fashion-MNIST, {args.clients} clients, "
            f"{args.local_steps} local steps per job, step times lognormal(sigma={args.sigma}) "
            "from the root seed, simulated seconds (1 s per step for the median client)",
            "quality on a grid of simulated time (every "
            f"{args.eval_every} synchronous round(s)): "
            + (
                "Frechet distance (FD) of 1,000 samples to 1,000 real test images in the "
                "evaluator classifier's feature space"
                if args.metric == "fd"
                else "TSTR accuracy (a small CNN trained on 5,000 synthetic images for 2 "
                "epochs, scored on the real test set); FD beside it"
            ),
            "TSTR at stop: the evaluator's own (10,000 synthetic images, 2 epochs)",
            f"target: the synchronous run's last {args.metric}; speed-up: the synchronous "
            "run's sim s to reach it (its first grid point as good) / the mode's",
        ],
    )
    commit = current_commit()
    # The grid: one synchronous round, as long as its slowest client's job.
    cfg = load_config(ROOT / "configs" / "fmnist_cgan.yaml", recipe(args, "sync"))
    probe = build_experiment(cfg).federation
    step = max(probe.schedule.clock.step_seconds.values()) * args.local_steps  # type: ignore[attr-defined]
    step *= args.eval_every
    del probe
    target: float | None = None
    horizon = math.inf
    sync_time: float | None = None
    for mode in args.modes.split(","):
        grid, exp, wall = run_mode(args, mode, target, horizon, step)
        fed = exp.federation
        if mode == "sync":
            target = grid.points[-1][1]
            horizon = grid.points[-1][0]
        assert target is not None
        hit = next((t for t, v, _ in grid.points if as_good(v, target, args.metric)), None)
        if mode == "sync":
            sync_time = hit
        # The evaluator's own TSTR where the run stops (the TSTR grid has its own figures).
        final = (
            exp.evaluator.evaluate_task(  # type: ignore[union-attr]
                fed.load_global_into_task(), torch_generator(cfg.seed, "tstr"), final=True
            )
            if args.metric == "fd"
            else {}
        )
        schedule = {
            "sync": "all clients per round",
            "fedbuff": f"K={args.buffer}, a=0.5, concurrency {args.clients}",
            "gossip": f"{args.topology}, metropolis",
        }[mode]
        row = {
            "commit": commit,
            "mode": mode,
            "data": "fashion-mnist",
            "partition": "iid" if args.partition == "iid" else "dirichlet 0.5",
            "clients": args.clients,
            "speeds": f"lognormal {args.sigma}",
            "schedule": schedule,
            "rounds run": fed.next_round,
            "sim s at stop": grid.points[-1][0],
            "metric": args.metric,
            "target": target,
            "sim s to target": (
                hit
                if hit is not None
                else "not reached" + (" (wall budget)" if grid.out_of_time else "")
            ),
            "speed-up vs sync": (
                sync_time / hit if hit is not None and sync_time is not None else "-"
            ),
            "FD at stop": grid.fds[-1],
            "best FD": min(grid.fds),
            "TSTR at stop": final.get("tstr_accuracy"),
            "mean staleness": (
                sum(grid.staleness) / len(grid.staleness) if grid.staleness else 0.0
            ),
            "client jobs": grid.jobs,
            "wall s": wall,
        }
        print(table.append(row), flush=True)


if __name__ == "__main__":
    main()
