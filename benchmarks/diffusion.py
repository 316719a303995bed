"""Diffusion benchmark (issue 13): federated DDPM, whole and partial, against centralized and
the federated cGAN, each given the same training wall time, on Fashion-MNIST.

Every method trains from ``configs/fmnist_ddpm.yaml`` (10 clients, Dirichlet 0.5, FedAvg
of 4 clients a round) until its training wall time passes ``--budget`` seconds: the round
that crosses it becomes the last. Evaluation is timed apart, after training, with the same
evaluator settings for every row. A partial scheme's global model holds only the shared
blocks, so it is evaluated as a client holds it: the global model with the private blocks
of the client holding the most examples; and, in a second row, as the clients would
release it together (``fedgen.engine.image_union``): each class drawn from the own models
of the clients holding it, in proportion to their examples of it. One row is appended to
``benchmarks/results/diffusion.md`` as soon as each method ends, so a cut-off run still
leaves figures.

    PYTHONPATH=src .venv/bin/python benchmarks/diffusion.py --budget 600 [--only whole udec]
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path
from typing import Any

import torch

from fedgen.config import load_config
from fedgen.engine.federation import Federation
from fedgen.engine.image_union import union_figures
from fedgen.experiment import load_run, make_evaluator, run_experiment
from fedgen.report.results_table import ResultsTable
from fedgen.seeding import torch_generator
from fedgen.tasks.base import TaskParams
from fedgen.tasks.diffusion import DdpmParams

#: Method name -> recipe overrides.
METHODS: dict[str, list[str]] = {
    "ddpm whole": ["task.params.federate=whole"],
    "ddpm centralized": ["federation.centralized=true"],
    "ddpm udec": ["task.params.federate=udec"],
    "ddpm usplit": ["task.params.federate=usplit"],
    "ddpm ulatdec": ["task.params.federate=ulatdec"],
    # The default experiment's cGAN (batches of 16; the recipe's local steps, 120).
    "cgan": ["task.name=cgan", "task.params={batch_size: 16}"],
}
COLUMNS = [
    "method",
    "rounds",
    "train_seconds",
    "cpu_seconds",
    "tstr_accuracy",
    "frechet_distance",
    "precision",
    "recall",
    "MB_up_down",
    "federated_share",
    "sample_s_per_1000",
    "ddim_steps",
    "evaluated_as",
]


NOTES = [
    "Fashion-MNIST, 10 clients, Dirichlet(0.5), FedAvg of 4 clients a round (LOCAL, "
    "sampling from an EMA 0.9 of the global model, warmed up); centralized: one client "
    "with the pooled data and the same "
    "sample-visits per round. Every method trains until its training wall time passes the "
    "budget (the round crossing it is the last); evaluation is timed apart. The machine's 2 "
    "cores were shared with other work: `cpu_seconds` is the CPU time the training rounds "
    "actually got.",
    "DDPM: DDPM_SETUP. `sample_s_per_1000`: seconds to draw 1,000 images on one core at "
    "that step count.",
    "Frechet distance, precision and recall on the 128-d features of a CNN trained on the "
    "real training split (not Inception/FID), 1,000 generated vs 1,000 real test images; "
    "TSTR: a fresh CNN trained 3 epochs on TSTR_SAMPLES generated images, tested on the "
    "10,000 real test images. `MB_up_down`: all bytes sent both ways over the run (encoded "
    "messages).",
    "Partial schemes (FedDiffuse, our reading; embeddings always shared): usplit shares the "
    "encoder, ulatdec the latent and decoder, udec the decoder; `federated_share` is the "
    "share of UNet parameters exchanged. Each is evaluated twice: as the client with the "
    "most examples among those that trained holds the model (shared blocks + its private "
    "ones), and as the union of the clients' own models (fedgen.engine.image_union: each "
    "image of class c from a client holding c, drawn in proportion to its examples of c).",
]


def ddpm_setup(params: DdpmParams) -> str:
    """The recipe's UNet, noise schedule, loss and sampling in words (as the run has them)."""
    loss = f"Min-SNR-{params.snr_gamma:g} loss weights" if params.snr_gamma else "the simple loss"
    return (
        f"UNet width {params.width}, T={params.timesteps} {params.schedule} schedule, {loss}, "
        f"label dropout {params.label_dropout:g}, sampled with {params.sampling_steps} DDIM "
        f"steps (eta {params.eta:g}) and classifier-free guidance {params.guidance_scale:g} "
        "(two UNet passes per step)"
    )


def table_notes(
    local_steps: int | None, batch_size: int, tstr_samples: int, params: DdpmParams
) -> list[str]:
    """The table's notes, with the recipe's local work, DDPM and TSTR set as this run has them."""
    return [
        note.replace("LOCAL", f"{local_steps} local steps of {batch_size}")
        .replace("TSTR_SAMPLES", f"{tstr_samples:,}")
        .replace("DDPM_SETUP", ddpm_setup(params))
        for note in NOTES
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


#: Images drawn to time sampling.
SAMPLE_TIMING = 500


class WallTimeBudget:
    """Makes the round that ends after ``seconds`` of training the federation's last.

    The round loop has no wall-time stop; a benchmark needs one so that every method gets
    the same training time. Rounds are wrapped, not rewritten: ``Federation.rounds`` is set
    to end after the crossing round, so callbacks treat it as the final one.
    """

    def __init__(self, seconds: float, cpu: bool = False) -> None:
        self.seconds = seconds
        #: Count CPU seconds instead of wall seconds: equal computation for every method
        #: however busy the shared machine is.
        self.count_cpu = cpu
        self.spent = 0.0
        #: CPU seconds of this process in those rounds: on a shared machine the wall time
        #: buys different amounts of computation, and this says how much it bought.
        self.cpu = 0.0
        self._original = Federation.run_round

    def __enter__(self) -> WallTimeBudget:
        budget = self

        def run_round(fed: Federation, r: int) -> Any:
            t0, c0 = time.perf_counter(), time.process_time()
            record = budget._original(fed, r)
            budget.spent += time.perf_counter() - t0
            budget.cpu += time.process_time() - c0
            if (budget.cpu if budget.count_cpu else budget.spent) >= budget.seconds:
                fed.rounds = r + 1
            return record

        Federation.run_round = run_round  # type: ignore[method-assign]
        return self

    def __exit__(self, *exc: object) -> None:
        Federation.run_round = self._original  # type: ignore[method-assign]


def _training_seconds(run_dir: Path) -> tuple[float, None]:
    """A finished run's training wall seconds (its rounds'); its CPU seconds are not kept."""
    lines = (run_dir / "metrics.jsonl").read_text().splitlines()
    return sum(json.loads(line)["seconds"] for line in lines), None


def evaluate(
    run_dir: Path,
    partial: bool,
    tstr_samples: int | None = None,
    sampling: dict[str, Any] | None = None,
) -> tuple[list[tuple[dict[str, Any], str]], float]:
    """Final figures of a finished run (TSTR included, and the seconds to sample 1,000
    images, timed on 500) with what model was evaluated, and the share of it federated;
    a partial scheme's union of the clients' own models as a second pair.
    ``tstr_samples``: draw this many images for TSTR instead of the run's setting;
    ``sampling``: task params that only change sampling (``guidance_scale``,
    ``sampling_steps``), validated as the task validates them."""
    exp = load_run(run_dir)
    config = exp.config
    if tstr_samples is not None:
        config = config.model_copy(
            update={"eval": config.eval.model_copy(update={"tstr_samples": tstr_samples})}
        )
    fed = exp.federation
    task = fed.load_global_into_task()
    if sampling:
        task.params = type(task.params).model_validate({**task.params.model_dump(), **sampling})
    label = "global model"
    if partial:
        # Among clients that trained (and so hold private blocks of their own).
        client = max(fed.private_states, key=lambda c: fed.clients[c].num_examples)
        task.load_state(fed.private_states[client])
        label = f"client {client} ({fed.clients[client].num_examples} examples)"
    evaluator = make_evaluator(config, exp.data, task.modality)
    gen = torch_generator(exp.config.seed, "eval-samples", fed.next_round)
    figures = evaluator.evaluate_task(task, gen, final=True)
    # Timed the same way for every task (a cGAN does not time its own sampling).
    labels = torch.arange(SAMPLE_TIMING) % task.num_classes
    t0 = time.perf_counter()
    task.sample(labels, gen)
    figures["sample_seconds_per_1000"] = (time.perf_counter() - t0) * 1000 / SAMPLE_TIMING
    share = getattr(task, "federated_fraction", lambda: 1.0)()
    rows = [(figures, label)]
    if partial:
        # The same evaluator and sampler settings, the same sampling timing.
        union = union_figures(fed, evaluator, finetune_steps=0, seed=exp.config.seed)
        own = {
            k.removesuffix("_union_personal"): v
            for k, v in union.items()
            if k.endswith("_union_personal")
        }
        own["sample_seconds_per_1000"] = figures["sample_seconds_per_1000"]
        own["ddim_steps"] = figures.get("ddim_steps")
        clients = int(own.pop("clients"))
        rows.append((own, f"union of {clients} clients' own models"))
    return rows, share


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--only", nargs="*", default=list(METHODS))
    parser.add_argument("--budget", type=float, default=600.0, help="training seconds each")
    parser.add_argument(
        "--cpu", action="store_true", help="count the budget in CPU seconds, not wall seconds"
    )
    parser.add_argument("--set", nargs="*", default=[], dest="overrides")
    parser.add_argument(
        "--tstr-samples",
        type=int,
        default=None,
        help="images drawn for TSTR (default: the recipe's 3,000, whose real-data ceiling "
        "is 0.78 on Fashion-MNIST; 10,000 real images reach 0.84)",
    )
    parser.add_argument(
        "--sampling",
        nargs="*",
        default=[],
        metavar="KEY=VALUE",
        help="with --evaluate-only: sample with these ddpm params instead of the run's "
        "(guidance_scale=1.0 sampling_steps=50)",
    )
    parser.add_argument(
        "--evaluate-only",
        action="store_true",
        help="evaluate the finished runs already under --out instead of training",
    )
    parser.add_argument("--out", type=Path, default=Path("benchmarks/runs/diffusion"))
    parser.add_argument("--table", type=Path, default=Path("benchmarks/results/diffusion.md"))
    args = parser.parse_args()
    sampling = {k: float(v) for k, v in (item.split("=", 1) for item in args.sampling)}
    if "sampling_steps" in sampling:
        sampling["sampling_steps"] = int(sampling["sampling_steps"])
    if sampling and not args.evaluate_only:
        parser.error("--sampling re-evaluates finished runs: add --evaluate-only")

    table = ResultsTable(args.table, COLUMNS)
    kind = "CPU time" if args.cpu else "wall time"
    budget_note = (
        f"Finished runs under {args.out} evaluated again; training as they recorded it."
        if args.evaluate_only
        else f"Training budget: {args.budget:.0f} s of {kind} per method."
    )
    if sampling:
        budget_note += f" Sampled with {sampling} instead of the recipe's settings."
    recipe = load_config(Path("configs/fmnist_ddpm.yaml"), [*EVAL, *args.overrides])
    tstr = args.tstr_samples or recipe.eval.tstr_samples
    local = table_notes(
        recipe.federation.local_steps,
        recipe.task.params.get("batch_size", TaskParams().batch_size),
        tstr,
        DdpmParams.model_validate(recipe.task.params),
    )
    notes = [budget_note, *local]
    table.start("diffusion", notes)
    for method in args.only:
        overrides = [*EVAL, *METHODS[method], f"name={method.replace(' ', '-')}", *args.overrides]
        cfg = load_config(Path("configs/fmnist_ddpm.yaml"), overrides)
        run_dir = args.out / cfg.name
        if args.evaluate_only:
            summary = json.loads((run_dir / "summary.json").read_text())
            spent, cpu = _training_seconds(run_dir)
        else:
            with WallTimeBudget(args.budget, cpu=args.cpu) as budget:
                summary = run_experiment(cfg, run_dir, progress=False)
            spent, cpu = budget.spent, budget.cpu
        t0 = time.perf_counter()
        partial = cfg.task.name == "ddpm" and cfg.task.params.get("federate", "whole") != "whole"
        rows, share = evaluate(run_dir, partial, args.tstr_samples, sampling)
        eval_seconds = time.perf_counter() - t0
        bytes_total = (summary["bytes_up"] or 0) + (summary["bytes_down"] or 0)
        for figures, label in rows:
            row = {
                "method": method,
                "rounds": summary["rounds"],
                "train_seconds": spent,
                "cpu_seconds": cpu,
                "tstr_accuracy": figures.get("tstr_accuracy"),
                "frechet_distance": figures.get("frechet_distance"),
                "precision": figures.get("precision"),
                "recall": figures.get("recall"),
                "MB_up_down": bytes_total / 1e6,
                "federated_share": share,
                "sample_s_per_1000": figures.get("sample_seconds_per_1000"),
                "ddim_steps": figures.get("ddim_steps"),
                "evaluated_as": label,
            }
            table.append(row)
            print(json.dumps({**row, "eval_seconds": eval_seconds}), flush=True)


if __name__ == "__main__":
    main()
