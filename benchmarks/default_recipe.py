"""The default experiment's recipe against candidate changes, at equal training CPU time.

Each variant is ``configs/fmnist_cgan.yaml`` plus its overrides, trained until
``--train-minutes`` of this process's CPU time are spent (the round that crosses the
budget is the last; ``fedgen.engine.budget.TimeBudget``: CPU time, so other jobs on
the shared machine inflate it less than wall time), then evaluated once as the default
run ends (TSTR on the recipe's 30,000 synthetic images, Frechet distance, precision
and recall on the feature classifier). One row per run is appended to
``benchmarks/results/default_recipe.md`` as soon as it ends; with ``--set
eval.tstr_every=N`` also one per N rounds before the last (the run's TSTR curve).

    FEDGEN_DATA_DIR=/work/shared/data taskset -c 1 .venv/bin/python \\
        benchmarks/default_recipe.py --train-minutes 8 --variants default hinge-sn

With the in-process backend on one thread (``--set`` defaults below), a variant gets
about half the training the 2-core default run gets in as many wall minutes: screen
variants this way, then confirm the chosen recipe with ``time ./run.sh``.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from fedgen.config import PREVIOUS_DEFAULT_EXPERIMENT, load_config
from fedgen.engine.budget import TimeBudget
from fedgen.experiment import Experiment, run_experiment
from fedgen.report.results_table import ResultsTable

ROOT = Path(__file__).resolve().parents[1]

#: name -> overrides of the default recipe.
VARIANTS: dict[str, list[str]] = {
    "default": [],
    # The default recipe until 2026-12-04 (30 steps of 64, now 120 of 16): the "default"
    # of every row written before then, and the base the variants below it overrode.
    "b64-s30": PREVIOUS_DEFAULT_EXPERIMENT,
    "centralized": ["federation.centralized=true"],
    "hinge-sn": ["task.params.loss=hinge", "task.params.spectral_norm=true"],
    "hinge-sn-d2": [
        "task.params.loss=hinge",
        "task.params.spectral_norm=true",
        "task.params.d_steps=2",
    ],
    "hinge-sn-wide-g": [
        "task.params.loss=hinge",
        "task.params.spectral_norm=true",
        "task.params.generator_width=64",
    ],
    # SNGAN's Adam (Miyato et al. 2018): no first-moment momentum.
    "hinge-sn-b0": [
        "task.params.loss=hinge",
        "task.params.spectral_norm=true",
        "task.params.betas=[0.0, 0.9]",
    ],
    "d2": ["task.params.d_steps=2"],
    "ac": ["task.params.aux_weight=1.0"],
    "hinge-sn-ac": [
        "task.params.loss=hinge",
        "task.params.spectral_norm=true",
        "task.params.aux_weight=1.0",
    ],
    "wide-g": ["task.params.generator_width=64"],
    "wide": ["task.params.generator_width=64", "task.params.discriminator_width=64"],
    "uniform-labels": ["task.params.fake_labels=uniform"],
    "lr-4e-4": ["task.params.lr=4e-4"],
    "steps-60": ["federation.local_steps=60"],
    "ema-0.8": ["strategy.params.ema_decay=0.8"],
    # Sample from an average over ~20 rounds instead of ~10.
    "ema-0.95": ["strategy.params.ema_decay=0.95"],
    "batch-128": ["task.params.batch_size=128"],
    # The same examples a round in more, smaller steps: federated CTGAN's loss was
    # sequential steps (tabular.md), and FedAvg of 4 clients x 30 steps takes a quarter
    # of the centralized run's sequential generator steps.
    "b32-s60": ["task.params.batch_size=32", "federation.local_steps=60"],
    "b16-s120": ["task.params.batch_size=16", "federation.local_steps=120"],
    "hinge-sn-b16-s120": [
        "task.params.loss=hinge",
        "task.params.spectral_norm=true",
        "task.params.batch_size=16",
        "federation.local_steps=120",
    ],
    "hinge-sn-b32-s60": [
        "task.params.loss=hinge",
        "task.params.spectral_norm=true",
        "task.params.batch_size=32",
        "federation.local_steps=60",
    ],
    # The same client steps in twice the rounds (run with federation.rounds=160): 2
    # clients a round, less averaging of skewed updates.
    "frac-0.2": ["strategy.params.fraction=0.2"],
    # Server momentum at the same long-run step (server_lr / (1 - momentum) = 1).
    "fedavgm-0.5": [
        "strategy.name=fedavgm",
        "strategy.params.momentum=0.5",
        "strategy.params.server_lr=0.5",
    ],
}
COLUMNS = [
    "variant",
    "overrides",
    "rounds",
    "local_steps",
    "train_cpu_s",
    "train_wall_s",
    "tstr_accuracy",
    "frechet_distance",
    "precision",
    "recall",
    "eval_s",
]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--variants", nargs="+", default=list(VARIANTS), choices=list(VARIANTS))
    parser.add_argument("--train-minutes", type=float, default=8.0)
    parser.add_argument(
        "--set",
        nargs="*",
        default=["backend.name=inprocess", "backend.params={}", "threads=1"],
        help="overrides for every variant (default: one in-process thread)",
    )
    parser.add_argument("--out", type=Path, default=ROOT / "runs" / "default-recipe")
    parser.add_argument("--table", type=Path, default=ROOT / "benchmarks/results/default_recipe.md")
    args = parser.parse_args()
    table = ResultsTable(args.table, COLUMNS)
    table.start(
        "default recipe variants",
        notes=[
            f"each variant trains {args.train_minutes:g} min of CPU time (the round that "
            "crosses it is the last), then one evaluation (and one every N rounds with "
            "eval.tstr_every=N, each a row): TSTR (a CNN trained on 30,000 "
            "synthetic images, tested on the real test split), Frechet distance, precision "
            "and recall (k-NN manifolds) on the features of a CNN trained on the real "
            "training split",
            f"common overrides: {' '.join(args.set) or 'none'}",
        ],
    )
    for name in args.variants:
        overrides = [*VARIANTS[name], "federation.rounds=100000", "eval.every=0", *args.set]
        cfg = load_config(ROOT / "configs/fmnist_cgan.yaml", overrides)
        run_dir = args.out / name
        if run_dir.exists():
            raise SystemExit(f"{run_dir} exists: remove it or pass another --out")

        budget = TimeBudget(args.train_minutes * 60, cpu=True)

        def on_ready(exp: Experiment, budget: TimeBudget = budget) -> None:
            exp.federation.callbacks.insert(0, budget)

        run_experiment(cfg, run_dir, progress=False, on_ready=on_ready)
        rounds = [json.loads(line) for line in (run_dir / "metrics.jsonl").open()]
        # One row per round that measured TSTR: the last, and with ``--set
        # eval.tstr_every=N`` every N rounds before it, so one run gives the curve.
        train_s = 0.0
        for record in rounds:
            train_s += float(record.get("seconds", 0.0))
            if "tstr_accuracy" not in record:
                continue
            last = record is rounds[-1]
            row = {
                "variant": name,
                "overrides": " ".join(VARIANTS[name]) or "-",
                "rounds": record["round"] + 1,
                "local_steps": cfg.federation.local_steps,
                # The CPU budget is read once, as the run ends.
                "train_cpu_s": round(budget.spent) if last else None,
                "train_wall_s": round(train_s),
                "eval_s": round(float(record.get("eval_seconds", 0.0))),
                **{
                    k: round(float(record[k]), 4)
                    for k in ("tstr_accuracy", "frechet_distance", "precision", "recall")
                },
            }
            print(table.append(row), flush=True)


if __name__ == "__main__":
    main()
