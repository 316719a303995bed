"""How many fine-tuning steps the union of a silo federation's table takes.

Loads a finished table run (``fedgen run configs/tabular_<table>_ctgan.yaml --out RUN``)
and measures the union of every client's rows drawn from its own model
(``fedgen.engine.table_union``) for each number of fine-tuning steps, once per
fine-tuning seed: the quality score, pair trends and TSTR macro F1 of each union, and
their means over the seeds. The run's own global model is measured first with the same
evaluator, for reference. A GAN's last iterate moves with every step, so the figures
need not rise with the steps; the seeds say how much of a difference is noise.

    taskset -c 0 .venv/bin/python benchmarks/table_union_steps.py RUN --steps 5 10 30 \
        [--seeds 1 2 3] [--out benchmarks/results/tabular.md]

Rows are appended one at a time.
"""

from __future__ import annotations

import argparse
import statistics
from pathlib import Path

from fedgen.engine.table_union import union_figures
from fedgen.experiment import load_run, make_evaluator
from fedgen.report.results_table import ResultsTable, current_commit
from fedgen.seeding import torch_generator

ROOT = Path(__file__).resolve().parents[1]
COLUMNS = [
    "commit",
    "run",
    "model",
    "fine-tuning steps",
    "seeds",
    "quality (each seed)",
    "quality",
    "pair trends",
    "TSTR F1 (each seed)",
    "TSTR F1",
]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("run", type=Path, help="a finished table run's folder")
    parser.add_argument("--steps", type=int, nargs="+", required=True)
    parser.add_argument("--seeds", type=int, nargs="+", default=[1, 2, 3])
    parser.add_argument("--out", type=Path, default=ROOT / "benchmarks/results/tabular.md")
    args = parser.parse_args()
    if min(args.steps) < 1:
        raise SystemExit("--steps: fine-tuning takes at least one step")
    exp = load_run(args.run)
    cfg = exp.config
    evaluator = make_evaluator(cfg, exp.data, exp.task.modality)
    fed = exp.federation
    table = ResultsTable(args.out, COLUMNS)
    table.start(
        "Union of the clients' fine-tuned table models by fine-tuning steps",
        notes=[
            f"run: {args.run} ({cfg.name}, {cfg.data.partition.kind}, {fed.next_round} "
            f"rounds of {cfg.federation.local_steps} local steps, seed {cfg.seed})",
            "union: every client fine-tunes the final global model N steps on its own "
            "rows, draws its share of the rows with its own category counts, shares "
            "joined (fedgen.engine.table_union); each fine-tuning seed a separate union",
            "quality: sdmetrics QualityReport; TSTR F1: macro F1 on the run's holdout, "
            f"mean over {cfg.eval.tstr_repeats} synthetic draws; each figure's mean over seeds",
        ],
    )
    commit, name = current_commit(), args.run.name
    task = fed.load_global_into_task()
    own = evaluator.evaluate_task(task, torch_generator(cfg.seed, "union-steps"), final=True)
    print(
        table.append(
            {
                "commit": commit,
                "run": name,
                "model": "global",
                "fine-tuning steps": 0,
                "seeds": "-",
                "quality": own["quality_score"],
                "pair trends": own["column_pair_trends"],
                "TSTR F1": own["ml_efficacy"],
            }
        )
    )
    for steps in args.steps:
        runs = [
            union_figures(fed, evaluator, finetune_steps=steps, seed=seed) for seed in args.seeds
        ]
        quality = [r["quality_score_union_finetuned"] for r in runs]
        tstr = [r["ml_efficacy_union_finetuned"] for r in runs]
        pairs = [r["column_pair_trends_union_finetuned"] for r in runs]
        print(
            table.append(
                {
                    "commit": commit,
                    "run": name,
                    "model": "union, fine-tuned",
                    "fine-tuning steps": steps,
                    "seeds": " ".join(map(str, args.seeds)),
                    "quality (each seed)": " / ".join(f"{q:.3f}" for q in quality),
                    "quality": statistics.mean(quality),
                    "pair trends": statistics.mean(pairs),
                    "TSTR F1 (each seed)": " / ".join(f"{t:.3f}" for t in tstr),
                    "TSTR F1": statistics.mean(tstr),
                }
            ),
            flush=True,
        )


if __name__ == "__main__":
    main()
