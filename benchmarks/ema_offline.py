"""Averaging over rounds, measured after the fact: one run, every moving-average decay.

The server's exponential moving average of the global model (``strategy.params.
ema_decay``) only changes which model is sampled and evaluated, never the training
itself. Under DP it is post-processing, so any decay is free in privacy: averaging
the noisy iterates cancels part of the noise the mechanism added (De et al. 2022
found it decisive for DP-SGD classifiers). Rather than one run per decay, which under
DP would also differ in the secret noise draws, this replays the averages of one run
that kept every round's checkpoint (``checkpoint.keep >= federation.rounds``):

    .venv/bin/python benchmarks/ema_offline.py RUN_DIR --decays 0 0.9 0.95 0.98 \\
        --rounds 50 75 100 [--debias] --table benchmarks/results/ema_offline.md

Decay 0 is the last iterate as trained. The strategy's average starts at the initial
model and keeps ``decay ** rounds`` of it, which a slow decay cannot shed in a short
run; ``--debias`` adds, for each decay, the average of the trained models only
(``strategy.params.ema_warmup: debias``, the weights normalised as Adam corrects its
moments). Before anything is evaluated, the run's own
decay is replayed and checked against the average stored in its checkpoints, so a
table row can be trusted to be the average it names. Every decay at one round is
evaluated with the same seeds (the round's), so their difference is the model's.
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path
from typing import Any

from fedgen.config import load_config
from fedgen.engine.checkpoint import check_payload, list_checkpoints, load_checkpoint, restore_state
from fedgen.experiment import CHECKPOINT_FORMAT, build_experiment, evaluate_task
from fedgen.report.results_table import ResultsTable
from fedgen.strategies.detection import DetectingStrategy
from fedgen.strategies.fedavg import FedAvg
from fedgen.strategies.moving_average import EmaWarmup, replay_averages
from fedgen.types import StateDict

COLUMNS = [
    "run",
    "round",
    "decay",
    "average",
    "tstr_accuracy",
    "frechet_distance",
    "precision",
    "recall",
    "eval_seconds",
]


def _max_gap(a: StateDict, b: StateDict) -> float:
    return max(float((a[k].double() - b[k].double()).abs().max()) for k in a)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("run_dir", type=Path, help="a run folder that kept every round's checkpoint")
    ap.add_argument("--decays", type=float, nargs="+", default=[0.0, 0.9, 0.95, 0.98])
    ap.add_argument("--rounds", type=int, nargs="+", help="rounds to evaluate (1-based)")
    ap.add_argument(
        "--debias", action="store_true", help="also each decay's average of trained models only"
    )
    ap.add_argument("--table", type=Path, default=Path("benchmarks/results/ema_offline.md"))
    args = ap.parse_args(argv)

    cfg = load_config(args.run_dir / "config.yaml", validate_components=False)
    found = dict(list_checkpoints(args.run_dir / "checkpoints"))
    rounds = args.rounds or ([max(found) + 1] if found else [1])
    missing = [r for r in range(max(rounds, default=0)) if r not in found]
    if not found or missing:
        sys.exit(
            f"{args.run_dir} lacks the checkpoints of rounds {[r + 1 for r in missing][:10]} "
            f"(of {len(missing)} missing): the averages need every round's model. Run it with "
            "--set checkpoint.keep=N, N at least the rounds it trains."
        )
    params = cfg.strategy.params
    own_decay = params.get("ema_decay")
    warmup: EmaWarmup = params.get("ema_warmup", False)

    exp = build_experiment(cfg, start_weights=True)
    fed = exp.federation
    # The strategy that holds the average (under a detection stage, the one it wraps).
    averaging = fed.strategy
    while isinstance(averaging, DetectingStrategy):
        averaging = averaging.inner
    if not isinstance(averaging, FedAvg):
        sys.exit(
            f"strategy {cfg.strategy.name!r} holds no single global moving average; this "
            "replays the FedAvg family's only (fedavg, fedprox, ditto, fedavgm, fedadam, ...)"
        )
    start = {k: v.clone() for k, v in fed.global_state.items()}
    fingerprint = cfg.fingerprint()
    keep = {count - 1 for count in rounds}
    states: list[StateDict] = []
    stored: dict[int, Any] = {}
    own_averages: list[StateDict] = []
    for r in range(max(rounds)):
        state = check_payload(
            load_checkpoint(found[r]), found[r], format=CHECKPOINT_FORMAT, fingerprint=fingerprint
        )
        if own_decay is not None:
            # No average yet (every round so far failed): evaluation used the state.
            own_averages.append(state["strategy"].get("ema", state["global_state"]))
        states.append(state["global_state"])
        if r in keep:
            stored[r] = state
    # A failed round left the state as it was and the strategy's average untouched (the
    # newest checkpoint's history has every round's record).
    applied = ["round_failed" not in state["history"][r] for r in range(len(states))]
    if not all(applied):
        print(f"rounds {[r + 1 for r, a in enumerate(applied) if not a]} failed: not averaged")
    if own_decay is not None:
        every = set(range(len(states)))
        replayed = replay_averages(start, states, own_decay, warmup, every, applied)
        gap = max(_max_gap(replayed[r], own) for r, own in enumerate(own_averages))
        # float32 sums in another order may differ in the last bits, never more
        if gap > 1e-4:
            sys.exit(
                f"replaying decay {own_decay} does not give the run's own average (largest "
                f"gap {gap:.3g}); this run's strategy averages differently"
            )
        print(f"replayed decay {own_decay}: largest gap to the stored average {gap:.2g}")

    models: dict[tuple[float, str], dict[int, StateDict]] = {}
    for decay in args.decays:
        if decay == 0:
            models[(0.0, "last iterate")] = {r: states[r] for r in keep}
            continue
        models[(decay, "strategy")] = replay_averages(start, states, decay, warmup, keep, applied)
        if args.debias:
            models[(decay, "debiased")] = replay_averages(
                start, states, decay, "debias", keep, applied
            )

    table = ResultsTable(args.table, COLUMNS)
    table.start(
        f"moving average after the fact: {args.run_dir.name}",
        [
            f"run: `{args.run_dir}` ({cfg.task.name}, {cfg.data.num_clients} clients, "
            f"{len(states)} rounds read, its own decay {own_decay}, warmup {warmup})",
            f"average: `strategy` is the server's moving average with the run's warm-up "
            f"({warmup}; without one it starts at the initial model, whose weight decay ** "
            "rounds stays in it), `debiased` weights only the rounds' models, `last "
            "iterate` the model as trained; each round's rows share its eval seeds",
        ],
    )
    for count in rounds:
        r = count - 1
        for (decay, kind), series in models.items():
            restore_state(fed, stored[r], found[r], fed.task.private_state())
            # The evaluation samples the strategy's average when it has one.
            averaging.ema = None if decay == 0 else {k: v.clone() for k, v in series[r].items()}
            t0 = time.perf_counter()
            figures = evaluate_task(exp, tstr=True)
            row = {
                "run": args.run_dir.name,
                "round": count,
                "decay": decay,
                "average": kind,
                **{c: figures.get(c) for c in COLUMNS[4:8]},
                "eval_seconds": time.perf_counter() - t0,
            }
            print(table.append(row), flush=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
