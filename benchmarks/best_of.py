"""Best-of-m sampling by the discriminator, measured after the fact on a run's model.

A conditional GAN's discriminator is released with its generator; scoring m draws of the
generator by D(x, y) and keeping the best (discriminator rejection sampling in its
best-of-m form, Azadi et al. 2019) reads only the released model, so under DP it is
post-processing and free in privacy. This evaluates a run folder's newest checkpoint
(the model its own final evaluation sampled, ``eval.model``) with each m, every row with
the run's own evaluation seeds, so the row of the run's own ``eval.best_of`` (1 unless
set) gives its final figures back and the rows differ by the sampling alone (a run
samples this way itself with ``eval.best_of``):

    .venv/bin/python benchmarks/best_of.py RUN_DIR --best-of 1 2 4 8 \\
        --table benchmarks/results/best_of.md
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

from fedgen.engine.image_union import load_run_model
from fedgen.experiment import load_run, make_evaluator
from fedgen.report.results_table import ResultsTable
from fedgen.seeding import torch_generator
from fedgen.tasks.best_of import best_of_problems

COLUMNS = [
    "run",
    "round",
    "best_of",
    "tstr_accuracy",
    "tstr_std",
    "frechet_distance",
    "precision",
    "recall",
    "eval_seconds",
]


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("run_dir", type=Path, help="a run folder of a conditional GAN")
    ap.add_argument("--best-of", type=int, nargs="+", default=[1, 2, 4, 8])
    ap.add_argument(
        "--repeats",
        type=int,
        default=None,
        help="TSTR repeats per row, each a fresh draw and classifier (default: the run's "
        "eval.tstr_repeats)",
    )
    ap.add_argument("--table", type=Path, default=Path("benchmarks/results/best_of.md"))
    args = ap.parse_args(argv)
    if any(m < 1 for m in args.best_of):
        sys.exit("--best-of takes counts of draws, each at least 1")

    exp = load_run(args.run_dir)
    fed, cfg = exp.federation, exp.config
    problems = best_of_problems(fed.task)
    if cfg.eval.model == "union":
        problems.append("the run evaluates the union of its clients' own models")
    if problems:
        sys.exit("best-of-m cannot be measured on this run: " + "; ".join(problems))
    summary = args.run_dir / "summary.json"
    own = json.loads(summary.read_text()) if summary.is_file() else {}
    if args.repeats is not None:
        settings = cfg.eval.model_copy(update={"tstr_repeats": args.repeats})
        cfg = cfg.model_copy(update={"eval": settings})
    evaluator = make_evaluator(cfg, exp.data, fed.task.modality)
    table = ResultsTable(args.table, COLUMNS)
    table.start(
        f"best-of-m sampling by the discriminator: {args.run_dir.name}",
        [
            f"run: `{args.run_dir}` ({cfg.task.name}, {cfg.data.num_clients} clients, newest "
            f"checkpoint after round {fed.next_round}, model `{cfg.eval.model}`; the run's own "
            f"final TSTR {own.get('tstr_accuracy', '-')}, drawn with its eval.best_of "
            f"{cfg.eval.best_of})",
            "best_of m: each image the highest-scoring of m generator draws by D(x, y), the "
            "released discriminator's logit; every row with the run's own evaluation seeds",
            f"TSTR: a CNN trained {cfg.eval.tstr_epochs} epochs on {cfg.eval.tstr_samples} "
            "synthetic images, tested on the real test split; the mean of "
            f"{cfg.eval.tstr_repeats} repeats (each a fresh draw and classifier seed), "
            "tstr_std their spread",
        ],
    )
    for m in args.best_of:
        # The seeds of the run's own final evaluation (``experiment.evaluate_task``).
        gen = torch_generator(cfg.seed, "eval-samples", fed.next_round)
        model = load_run_model(fed, cfg.eval.model, gen, m)
        t0 = time.perf_counter()
        figures = evaluator.evaluate_task(model, gen, final=True)
        row = {
            "run": args.run_dir.name,
            "round": fed.next_round,
            "best_of": m,
            "tstr_accuracy": figures.get("tstr_accuracy"),
            "tstr_std": figures.get("tstr_accuracy_std"),
            **{c: figures.get(c) for c in ("frechet_distance", "precision", "recall")},
            "eval_seconds": time.perf_counter() - t0,
        }
        print(table.append(row), flush=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
