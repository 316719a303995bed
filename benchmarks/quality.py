"""Quality benchmark: cGAN and cVAE on Fashion-MNIST and MNIST, centralized vs federated.

For each (task, data set, setting) it trains one run with the default
experiment's budget and appends one row to ``benchmarks/results/quality.md``
as soon as that run ends, so a cut-off benchmark still leaves figures.

    .venv/bin/python benchmarks/quality.py [--only cgan] [--rounds 40] [--out benchmarks/runs]
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import platform
import subprocess
import sys
import time
from pathlib import Path

import torch

from fedgen.config import load_config
from fedgen.experiment import run_experiment

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


def machine() -> str:
    cpu = "unknown CPU"
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    return (
        f"{cpu}, {torch.get_num_threads()} torch threads, Python {platform.python_version()},"
        f" torch {torch.__version__}"
    )


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

    args.table.parent.mkdir(parents=True, exist_ok=True)
    commit = subprocess.run(
        ["git", "rev-parse", "--short", "HEAD"], capture_output=True, text=True
    ).stdout.strip()
    with open(args.table, "a") as f:
        f.write(
            f"\n## {dt.datetime.now():%Y-%m-%d %H:%M} (commit {commit})\n\n"
            f"Machine: {machine()}.  \nCommand: `{' '.join([sys.executable, *sys.argv])}`\n\n"
            "Frechet distance and KID on the 128-d features of a CNN trained on the real "
            "training split (not Inception/FID); TSTR: a fresh CNN trained on 30,000 "
            "synthetic images, tested on the real test split. `seconds` is training "
            "plus evaluation wall time.\n\n"
            "| " + " | ".join(COLUMNS) + " |\n|" + "---|" * len(COLUMNS) + "\n"
        )
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
                run_dir = args.out / cfg.name
                t0 = time.perf_counter()
                summary = run_experiment(cfg, run_dir, progress=False)
                summary["seconds"] = time.perf_counter() - t0
                row = {"task": task, "data": data, "setting": setting, **summary}
                cells = [_fmt(row.get(c)) for c in COLUMNS]
                with open(args.table, "a") as f:
                    f.write("| " + " | ".join(cells) + " |\n")
                print(json.dumps({c: row.get(c) for c in COLUMNS}), flush=True)


def _fmt(v: object) -> str:
    if isinstance(v, float):
        return f"{v:.4g}" if abs(v) < 1000 else f"{v:.0f}"
    return str(v)


if __name__ == "__main__":
    main()
