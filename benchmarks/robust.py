"""Robustness benchmark (issue 14): aggregators against poisoning attacks, cGAN on Fashion-MNIST.

Every run is the same small federation (20 clients, Dirichlet 0.5, 12 sampled a round,
the same rounds and local steps) with a fraction of the clients malicious (chosen by
the seed; ``attackers.json`` in each run folder). ``grid`` runs every aggregator
against every attack at 20%; ``sweep`` runs FedAvg and one robust aggregator against
two attacks at 0, 10, 20 and 30%, for each seed; ``detect`` runs FedAvg behind the
detection stage (``fedgen.strategies.detection``, flagged clients left out) against
every attack and scores its flags against the attackers. One row is appended to
``benchmarks/results/robust.md`` as soon as each run ends, so a cut-off benchmark
still leaves figures.

    PYTHONPATH=src .venv/bin/python benchmarks/robust.py grid [--rounds 12] [--only median]
    PYTHONPATH=src .venv/bin/python benchmarks/robust.py sweep --robust median \
        --attacks sign_flip scaling
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path
from typing import Any

import torch

from fedgen.config import load_config
from fedgen.data.poison import trigger_rate
from fedgen.experiment import run_experiment
from fedgen.report.results_table import ResultsTable, current_commit

#: Aggregator -> strategy recipe (12 clients a round; byzantine f = 2, 20% of 12 rounded
#: down, which Bulyan's n >= 4f + 3 = 11 still meets; norm_bound just above the honest
#: update norms, 0.38-0.40 at 5 local Adam steps).
AGGREGATORS: dict[str, list[str]] = {
    "fedavg": ["strategy.name=fedavg", "strategy.params={fraction: 0.6}"],
    "median": ["strategy.name=median", "strategy.params={fraction: 0.6, byzantine: 2}"],
    "trimmed_mean": ["strategy.name=trimmed_mean", "strategy.params={fraction: 0.6, byzantine: 2}"],
    "krum": ["strategy.name=krum", "strategy.params={fraction: 0.6, byzantine: 2}"],
    "multi_krum": ["strategy.name=multi_krum", "strategy.params={fraction: 0.6, byzantine: 2}"],
    "bulyan": ["strategy.name=bulyan", "strategy.params={fraction: 0.6, byzantine: 2}"],
    "norm_bound": ["strategy.name=norm_bound", "strategy.params={fraction: 0.6, max_norm: 0.45}"],
    # FedAvg behind the detection stage, flagged clients left out (``detect`` mode).
    "fedavg+detect": [
        "strategy.name=fedavg",
        "strategy.params={fraction: 0.6}",
        "detection={threshold: 3.5, exclude: true}",
    ],
}
#: Attack -> the recipe's attack section (without the fraction).
ATTACKS: dict[str, str | None] = {
    "none": None,
    "sign_flip": "{kind: sign_flip, params: {scale: 4.0}}",
    "scaling": "{kind: scaling, params: {boost: 10.0}}",
    "label_flip": "{kind: label_flip}",
    "mode_collapse": "{kind: mode_collapse}",
    "backdoor": "{kind: backdoor, params: {pixels: 3}}",
}
COLUMNS = [
    "aggregator",
    "attack",
    "malicious",
    "seed",
    "rounds",
    "tstr_accuracy",
    "frechet_distance",
    "backdoor_rate",
    "seconds",
    "commit",
]
#: The ``detect`` mode's extra columns: flags against the attackers that took part.
DETECT_COLUMNS = [*COLUMNS[:-2], "flags", "precision", "recall", "seconds", "commit"]
BACKDOOR_PIXELS = 3


def notes(rounds: int, steps: int, tstr_samples: int = 5000, tstr_epochs: int = 2) -> list[str]:
    return [
        f"cGAN, Fashion-MNIST, 20 clients, Dirichlet(0.5), 12 clients a round, {rounds} rounds "
        f"x {steps} local steps, no moving average, one thread; the same budget for every run.",
        f"TSTR: a fresh CNN trained on {tstr_samples:,} synthetic images ({tstr_epochs} epochs), "
        "tested on the real "
        "test split; Frechet distance on 1,000 samples with the features of a CNN trained on "
        "the real split (not Inception/FID).",
        f"backdoor_rate: share of 1,000 samples (100 per class) whose {BACKDOOR_PIXELS}-pixel "
        "trigger pixels average above 0.75; on clean rows it is the false-positive baseline.",
        "Attacks: sign_flip sends -4 x its update, scaling 10 x (model replacement's boost), "
        "label_flip trains on labels 9 - y, mode_collapse on one image for every label, "
        f"backdoor stamps a {BACKDOOR_PIXELS}-pixel trigger (0.38% of the image) on its images.",
    ]


def run_one(
    aggregator: str,
    attack: str,
    fraction: float,
    seed: int,
    rounds: int,
    steps: int,
    out: Path,
    tstr: tuple[int, int] = (5000, 2),
) -> dict[str, Any]:
    """Train one run; return its row."""
    name = f"{aggregator}-{attack}-{int(fraction * 100)}-s{seed}"
    overrides = [
        f"name={name}",
        f"seed={seed}",
        "data.sources=[fashion-mnist]",
        "data.num_clients=20",
        "data.partition.kind=dirichlet",
        "data.partition.params={alpha: 0.5}",
        "task.name=cgan",
        # Batches of 64, as every row here since 2026-11 (the default experiment's
        # batches became 16 on 2026-12-04).
        "task.params.batch_size=64",
        "backend.name=inprocess",
        f"federation.rounds={rounds}",
        f"federation.local_steps={steps}",
        "threads=1",
        "ledger=false",
        "eval.every=0",
        "eval.num_quality_samples=1000",
        f"eval.tstr_samples={tstr[0]}",
        f"eval.tstr_epochs={tstr[1]}",
        "eval.grid_per_class=4",
        *AGGREGATORS[aggregator],
    ]
    section = ATTACKS[attack]
    if section is not None and fraction > 0:
        overrides.append(f"attack={section[:-1]}, fraction: {fraction}}}")
    cfg = load_config(None, overrides)
    captured: dict[str, Any] = {}
    cohorts: list[list[int]] = []

    def ready(exp: Any) -> None:
        # Record each round's cohort, to score the detection stage's flags.
        captured["exp"] = exp
        configure = exp.federation.strategy.configure

        def recorded(*args: Any) -> Any:
            plan = configure(*args)
            cohorts.append(plan.client_ids)
            return plan

        exp.federation.strategy.configure = recorded

    t0 = time.perf_counter()
    summary = run_experiment(cfg, out / name, progress=False, on_ready=ready)
    seconds = time.perf_counter() - t0
    task = captured["exp"].federation.load_global_into_task()
    labels = torch.arange(10).repeat_interleave(100)
    with torch.no_grad():
        images = task.sample(labels, torch.Generator().manual_seed(seed))
    row = {
        "aggregator": aggregator,
        "attack": attack,
        "malicious": fraction if section is not None else 0.0,
        "seed": seed,
        "rounds": rounds,
        "tstr_accuracy": summary.get("tstr_accuracy"),
        "frechet_distance": summary.get("frechet_distance"),
        "backdoor_rate": trigger_rate(images, BACKDOOR_PIXELS),
        "seconds": seconds,
        "commit": current_commit(),
    }
    if cfg.detection is not None:
        row.update(detection_scores(out / name, cohorts))
    return row


def detection_scores(run_dir: Path, cohorts: list[list[int]]) -> dict[str, float]:
    """Flags over the run, and their precision and recall against the attackers that took
    part (``attackers.json`` and each round's cohort)."""
    record = run_dir / "attackers.json"
    attackers = set(json.loads(record.read_text())["clients"]) if record.is_file() else set()
    rounds = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]
    flags = hits = present = 0
    for metrics, cohort in zip(rounds, cohorts, strict=False):
        flagged = {
            int(k.rsplit("/", 1)[1]) for k in metrics if k.startswith("strategy/detect/flag/")
        }
        flags += len(flagged)
        hits += len(flagged & attackers)
        present += len(set(cohort) & attackers)
    return {
        "flags": float(flags),
        "precision": hits / flags if flags else float("nan"),
        "recall": hits / present if present else float("nan"),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("mode", choices=["grid", "sweep", "detect"])
    parser.add_argument("--rounds", type=int, default=12)
    parser.add_argument("--steps", type=int, default=5)
    parser.add_argument(
        "--tstr-samples", type=int, default=5000, help="synthetic images TSTR trains on"
    )
    parser.add_argument("--tstr-epochs", type=int, default=2)
    parser.add_argument("--only", nargs="*", default=list(AGGREGATORS))
    parser.add_argument("--attacks", nargs="*", default=list(ATTACKS))
    parser.add_argument("--robust", default="median", help="sweep: the robust aggregator")
    parser.add_argument(
        "--max-norm",
        type=float,
        default=None,
        help="norm_bound's bound (default 0.45, for 5 local steps; honest median norms, "
        "logged as strategy/update_norm_median, were 0.92-1.06 at 15 steps)",
    )
    parser.add_argument("--seeds", nargs="*", type=int, default=[0, 1])
    parser.add_argument(
        "--fractions",
        nargs="*",
        type=float,
        default=[0.0, 0.1, 0.2, 0.3],
        help="sweep: malicious fractions (0 runs the clean pair once per seed)",
    )
    parser.add_argument("--out", type=Path, default=Path("benchmarks/runs/robust"))
    parser.add_argument("--table", type=Path, default=Path("benchmarks/results/robust.md"))
    args = parser.parse_args()
    if args.max_norm is not None:
        AGGREGATORS["norm_bound"] = [
            "strategy.name=norm_bound",
            f"strategy.params={{fraction: 0.6, max_norm: {args.max_norm}}}",
        ]

    table = ResultsTable(args.table, DETECT_COLUMNS if args.mode == "detect" else COLUMNS)
    if args.mode == "detect":
        table.start(
            "robust: FedAvg behind the detection stage (flagged clients left out) at 20%",
            notes(args.rounds, args.steps, args.tstr_samples, args.tstr_epochs),
        )
        plan = [("fedavg+detect", att, 0.2, 0) for att in args.attacks]
    elif args.mode == "grid":
        table.start(
            "robust: every aggregator x every attack at 20%",
            notes(args.rounds, args.steps, args.tstr_samples, args.tstr_epochs),
        )
        aggregators = [a for a in args.only if a != "fedavg+detect"]
        plan = [(agg, att, 0.2, 0) for att in args.attacks for agg in aggregators]
    else:
        table.start(
            f"robust: fedavg and {args.robust} at 0-30% malicious",
            notes(args.rounds, args.steps, args.tstr_samples, args.tstr_epochs),
        )
        plan = [
            (agg, att, frac, seed)
            for seed in args.seeds
            for i, att in enumerate(args.attacks)
            for frac in args.fractions
            for agg in ("fedavg", args.robust)
            if frac > 0 or i == 0  # one clean pair per seed
        ]
    for aggregator, attack, fraction, seed in plan:
        row = run_one(
            aggregator,
            attack,
            fraction,
            seed,
            args.rounds,
            args.steps,
            args.out,
            (args.tstr_samples, args.tstr_epochs),
        )
        table.append(row)
        print(json.dumps(row), flush=True)


if __name__ == "__main__":
    main()
