"""Quality benchmark: cGAN and cVAE on Fashion-MNIST and MNIST, centralized vs federated.

For each (task, data set, setting) it trains one run with the default
experiment's budget (or the overrides given) and appends one row to
``benchmarks/results/quality.md`` as soon as that run ends, so a cut-off
benchmark still leaves figures.

    .venv/bin/python benchmarks/quality.py [--only cgan] [--set federation.rounds=30] [--out DIR]
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

from fedgen.config import load_config
from fedgen.experiment import run_experiment
from fedgen.report.results_table import ResultsTable

SETTINGS = {
    "centralized": ["federation.centralized=true"],
    "iid": ["data.partition.kind=iid", "data.partition.params={}"],
    "dirichlet 0.5": ["data.partition.params={alpha: 0.5}"],
    "dirichlet 0.1": ["data.partition.params={alpha: 0.1, min_size: 5}"],
}
COLUMNS = [
    "task",
    "data",
    "setting",
    "frechet_distance",
    "kid",
    "inception_like_score",
    "precision",
    "recall",
    "tstr_accuracy",
    "tstr_f1",
    "seconds",
]
NOTES = [
    "Frechet distance and KID on the 128-d features of a CNN trained on the real training "
    "split (not Inception/FID); TSTR: a fresh CNN trained on 30,000 synthetic images, tested "
    "on the real test split; `seconds` is training plus evaluation wall time.",
    "10 clients, FedAvg (40% of clients per round, EMA 0.9 for sampling); centralized: one "
    "client with the pooled data and the same sample-visits.",
]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--only", nargs="*", default=["cgan", "cvae"])
    parser.add_argument("--data", nargs="*", default=["fashion-mnist", "mnist"])
    parser.add_argument("--settings", nargs="*", default=list(SETTINGS))
    parser.add_argument(
        "--set",
        nargs="*",
        default=[],
        dest="overrides",
        help="extra dotted.key=value overrides for every run",
    )
    parser.add_argument("--out", type=Path, default=Path("benchmarks/runs"))
    parser.add_argument("--table", type=Path, default=Path("benchmarks/results/quality.md"))
    args = parser.parse_args()

    table = ResultsTable(args.table, COLUMNS)
    table.start("quality", NOTES)
    for task in args.only:
        for data in args.data:
            for setting in args.settings:
                overrides = [
                    f"task.name={task}",
                    f"data.sources=[{data}]",
                    f"name={task}-{data}-{setting.replace(' ', '')}",
                    *SETTINGS[setting],
                    *args.overrides,
                ]
                cfg = load_config(None, overrides)
                t0 = time.perf_counter()
                summary = run_experiment(cfg, args.out / cfg.name, progress=False)
                summary["seconds"] = time.perf_counter() - t0
                row = {"task": task, "data": data, "setting": setting, **summary}
                table.append({c: row.get(c) for c in COLUMNS})
                print(json.dumps({c: row.get(c) for c in COLUMNS}), flush=True)


if __name__ == "__main__":
    main()
