"""HuSCF-GAN vs. its baselines at equal wall time, per scenario: the results table.

    FEDGEN_DATA_DIR=/work/shared/data .venv/bin/python benchmarks/huscf/table.py \
        --scenarios S1 S4 S6 --minutes 15

For each scenario (``configs/huscf/s<N>.yaml``) and method, trains for the same
wall-time budget (the round that crosses the budget is the last one: a
callback sets ``fed.rounds`` to the rounds done), evaluates every domain with
that domain's client generator on its own real test split
(``domain_eval.py``: TSTR accuracy/precision/recall/F1/FPR x100 with 29,952
synthetic images and the paper's CNN, inception-like score), and appends one
markdown row per run to ``benchmarks/results/huscf.md`` as soon as it ends.

Methods, all on the scenario's partition and architecture:

- ``centralized``: the cGAN on the pooled training data (one client, FedAvg);
- ``fedavg``: FedAvg cGAN, the whole model trained on every client;
- ``split_fedavg``: U-shaped split learning (split backend), FedAvg, no clustering;
- ``huscf``: HuSCF-GAN faithful (the recipe as is: oracle k, BatchNorm);
- ``fedgen_best``: fedgen's variant: k chosen by silhouette (no oracle), the
  light GroupNorm architecture (a quarter of the channels: many more
  iterations in the same time, no batch statistics mixed across domains), an
  AC-GAN class head on D5 trained on the client's own labels (``aux_weight``),
  and generators evaluated as moving averages over rounds (``ema_decay`` 0.9,
  warmed up: 0.7 at round 20, 0.9 from round 80).
- ``fedgen_bn``: the same additions (k by silhouette, class head, moving
  average) on the published full-width BatchNorm network.
  With ``--compare-raw`` a run with a moving average also writes a second row
  from the same run, the weights as trained (``<method> no-EMA``): the
  average's effect, measured side by side.

Seconds and bytes per iteration: for split methods, one iteration of all
clients together as the backend measures it (activations and gradients only;
the aggregation traffic is in ``metrics.jsonl``); for whole-model methods, a
round's wall time and traffic divided by its local steps.
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import os
import statistics
import sys
import time
from pathlib import Path
from typing import Any

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))

from domain_eval import PAPER_TSTR_SAMPLES, evaluate_domains

from fedgen.config import load_config
from fedgen.engine.budget import TimeBudget
from fedgen.engine.callbacks import CheckpointCallback, MetricsWriter, ProgressCallback
from fedgen.engine.checkpoint import list_checkpoints
from fedgen.engine.federation import Callback, Federation, RoundRecord
from fedgen.experiment import CHECKPOINT_FORMAT, Experiment, build_experiment, restore_latest
from fedgen.report.results_table import current_commit, machine_description

ROOT = Path(__file__).resolve().parents[2]

METHODS: dict[str, list[str]] = {
    "centralized": [
        "federation.centralized=true",
        "backend.name=inprocess",
        "backend.params={}",
        "strategy.name=fedavg",
        "strategy.params={fraction: 1.0, min_clients: 1}",
    ],
    "fedavg": [
        "backend.name=inprocess",
        "backend.params={}",
        "strategy.name=fedavg",
        "strategy.params={fraction: 1.0, min_clients: 1}",
    ],
    "split_fedavg": ["strategy.name=fedavg", "strategy.params={fraction: 1.0, min_clients: 1}"],
    "huscf": [],
    "fedgen_best": [
        "task.params.architecture=light",
        "strategy.params.num_clusters=null",
        "task.params.aux_weight=1.0",
        "strategy.params.ema_decay=0.9",
        "strategy.params.ema_warmup=true",
    ],
    # fedgen's additions on the published network: at full width the GroupNorm
    # network's discriminator wins outright within 30 iterations on S1 (loss 0.03 at
    # round 3, 0.000 from round 8), where BatchNorm's stays balanced (0.37-0.58).
    "fedgen_bn": [
        "task.params.architecture=faithful",
        "strategy.params.num_clusters=null",
        "task.params.aux_weight=1.0",
        "strategy.params.ema_decay=0.9",
        "strategy.params.ema_warmup=true",
    ],
}

#: Published TSTR (accuracy, precision, recall, F1, FPR) x100 per domain
#: (youssefga28/HuSCF-GAN, Results/Scenario_*/tables/final_metrics.csv).
PUBLISHED: dict[str, dict[str, tuple[float, ...]]] = {
    "S1": {"mnist": (97.87, 97.88, 97.87, 97.86, 0.24)},
    "S2": {"mnist": (97.17, 97.21, 97.18, 97.15, 0.31)},
    "S3": {
        "mnist": (96.83, 96.86, 96.79, 96.81, 0.35),
        "fashion-mnist": (82.93, 83.37, 82.93, 81.94, 1.90),
    },
    "S4": {
        "mnist": (96.21, 96.28, 96.16, 96.19, 0.42),
        "fashion-mnist": (81.90, 82.60, 81.90, 81.75, 2.01),
    },
    "S5": {
        "mnist": (96.15, 96.11, 96.10, 96.10, 0.45),
        "fashion-mnist": (81.46, 81.32, 81.46, 80.61, 1.95),
    },
    "S6": {
        "mnist": (95.94, 95.97, 95.96, 95.93, 0.45),
        "fashion-mnist": (81.94, 82.26, 81.94, 81.98, 2.01),
        "kmnist": (72.91, 74.31, 72.91, 73.09, 3.01),
    },
}
TSTR = ("accuracy", "precision", "recall", "f1", "fpr")
COLUMNS = (
    "scenario",
    "method",
    "domains",
    "TSTR acc",
    "prec",
    "rec",
    "F1",
    "FPR",
    "published acc",
    "vs published",
    "published P/R/F1/FPR",
    "IS-like",
    "analytic latency s/it",
    "measured s/it",
    "MB/it",
    "CPU s",
    "wall s",
    "rounds",
    "iterations",
)


class IterationBudget(Callback):
    """Ends the run after the round during which ``iterations`` local iterations were done
    (the paper's count is about 2,950: 50 rounds x 5 epochs of ~59 iterations)."""

    def __init__(self, iterations: int) -> None:
        self.iterations = iterations
        self.done = 0

    def on_run_start(self, fed: Federation) -> None:
        self.done = iterations_in(fed.history)  # a resumed run counts its earlier parts
        if self.done >= self.iterations:
            # A finished run resumed (e.g. to evaluate it again with another TSTR
            # protocol) trains no further round.
            fed.rounds = fed.next_round

    def on_round_end(self, fed: Federation, record: RoundRecord) -> None:
        self.done += int(record.metrics.get("steps", 0))
        if self.done >= self.iterations:
            fed.rounds = fed.next_round


class TstrCurve(Callback):
    """Every ``every`` iterations, the per-domain TSTR with a cheaper protocol, one markdown
    row appended to ``results`` at once (a cut-off run keeps its curve). The task's tensors
    are restored after each evaluation, so training goes on from exactly where it was.
    Set ``exp`` to the experiment once it is built (it is built with this callback)."""

    def __init__(self, every: int, samples: int, epochs: int, results: Path) -> None:
        self.exp: Experiment | None = None
        self.every, self.samples, self.epochs, self.results = every, samples, epochs, results
        self.done = 0
        self.next_at = every
        self.eval_seconds = 0.0
        self.t0 = 0.0

    def on_run_start(self, fed: Federation) -> None:
        # A resumed run goes on from its earlier parts' iterations and training time.
        self.done = iterations_in(fed.history)
        while self.next_at <= self.done:
            self.next_at += self.every
        self.t0 = time.perf_counter() - seconds_in(fed.history)

    def on_round_end(self, fed: Federation, record: RoundRecord) -> None:
        self.done += int(record.metrics.get("steps", 0))
        if self.done < self.next_at:
            return
        while self.next_at <= self.done:
            self.next_at += self.every
        t = time.perf_counter()
        assert self.exp is not None, "TstrCurve.exp is set after build_experiment"
        task = fed.task
        kept = {**task.federated_state(), **task.private_state()}
        figures = evaluate_domains(self.exp, tstr_samples=self.samples, tstr_epochs=self.epochs)
        task.load_state(kept)
        self.eval_seconds += time.perf_counter() - t
        train_wall = time.perf_counter() - self.t0 - self.eval_seconds
        accs = " / ".join(f"{100 * f['tstr_accuracy']:.2f}" for f in figures.values())
        with open(self.results, "a") as f:
            f.write(
                f"| {record.round} | {self.done} | {accs} | {train_wall:.0f} | "
                f"{time.perf_counter() - t:.0f} |\n"
            )


def iterations_in(history: list[dict[str, Any]]) -> int:
    """Local iterations done in the rounds of ``history``."""
    return sum(int(m.get("steps", 0)) for m in history)


def seconds_in(history: list[dict[str, Any]]) -> float:
    """Wall seconds the rounds of ``history`` took (training, not callbacks)."""
    return sum(float(m.get("seconds", 0.0)) for m in history)


def _mean(history: list[dict[str, Any]], key: str) -> float | None:
    vals = [m[key] for m in history if isinstance(m.get(key), int | float)]
    return statistics.fmean(vals) if vals else None


def run_one(
    scenario: str, method: str, args: argparse.Namespace, runs_dir: Path
) -> list[dict[str, Any]]:
    """Train one (scenario, method) under the budget, evaluate per domain, return the rows
    (two with ``--compare-raw`` and a moving average: averaged, and as trained)."""
    overrides = [
        *METHODS[method],
        "federation.rounds=100000",
        "eval.every=0",
        *args.set,
    ]
    if args.local_steps is not None:
        overrides += [f"federation.local_steps={args.local_steps}", "federation.local_epochs=null"]
    cfg = load_config(ROOT / f"configs/huscf/{scenario.lower()}.yaml", overrides)
    run_dir = runs_dir / f"{scenario.lower()}-{method}"
    run_dir.mkdir(parents=True, exist_ok=True)
    ckpt_dir = run_dir / "checkpoints"
    resume = bool(list_checkpoints(ckpt_dir))
    if resume and not args.resume:
        raise SystemExit(
            f"{run_dir} holds a run's checkpoints: pass --resume to continue it, or choose "
            "another --runs-dir"
        )
    if not resume:
        (run_dir / "metrics.jsonl").unlink(missing_ok=True)
    (run_dir / "config.yaml").write_text(cfg.to_yaml())
    callbacks: list[Callback] = [TimeBudget(args.minutes * 60)]
    if args.iterations:
        callbacks.append(IterationBudget(args.iterations))
    curve = None
    if args.curve_every:
        curve = TstrCurve(
            args.curve_every, args.curve_samples, args.curve_epochs, args.curve_results
        )
        with open(args.curve_results, "a") as f:
            f.write(
                f"\n## {scenario} {method}: {dt.datetime.now().isoformat(timespec='seconds')} "
                f"(commit {current_commit()}) on {machine_description()}\n\n"
                f"Command: `{' '.join([Path(sys.argv[0]).name, *sys.argv[1:]])}`; TSTR every "
                f"{args.curve_every} iterations, {args.curve_samples} samples x "
                f"{args.curve_epochs} epochs per domain"
                + (" (resumed: rows go on from the earlier part's)" if resume else "")
                + "\n\n"
                "| round | iterations | TSTR acc per domain | training wall s | eval s |\n"
                "|---|---|---|---|---|\n"
            )
        callbacks.append(curve)
    callbacks += [
        # Every round's state, so a run longer than one session goes on with --resume.
        CheckpointCallback(
            ckpt_dir, 1, 2, {"format": CHECKPOINT_FORMAT, "fingerprint": cfg.fingerprint()}
        ),
        MetricsWriter(run_dir / "metrics.jsonl"),
        ProgressCallback(f"{scenario} {method}", enabled=False),
    ]
    exp = build_experiment(cfg, callbacks)
    if curve is not None:
        curve.exp = exp
    fed = exp.federation
    earlier_wall = 0.0
    if resume:
        restore_latest(fed, ckpt_dir, cfg)
        earlier_wall = seconds_in(fed.history)
        print(f"   resumed after {iterations_in(fed.history)} iterations", flush=True)
    cpu0, t0 = time.process_time(), time.perf_counter()
    fed.run()
    wall, cpu = time.perf_counter() - t0, time.process_time() - cpu0
    if curve is not None:  # the curve's evaluations are not training time
        wall -= curve.eval_seconds
    # A resumed run's wall time adds its earlier parts' rounds; their CPU time was not
    # kept, so the CPU column of a resumed run is left empty rather than undercounted.
    wall += earlier_wall
    cpu_seconds: float | None = None if resume else cpu
    variants = {method: True}
    if args.compare_raw and fed.strategy.averaging:
        variants[f"{method} no-EMA"] = False
    evaluated = {
        name: evaluate_domains(
            exp,
            tstr_samples=args.tstr_samples,
            tstr_epochs=args.tstr_epochs,
            averaged=averaged,
            tstr_schedule=args.tstr_schedule,
        )
        for name, averaged in variants.items()
    }
    (run_dir / "domains.json").write_text(json.dumps(evaluated, indent=1))
    hist = fed.history
    split = any("split/seconds_per_iteration" in m for m in hist)
    if split:
        per_it = _mean(hist, "split/seconds_per_iteration")
        bytes_it = _mean(hist, "split/bytes_per_iteration")
        latency = [m["split/latency_analytic"] for m in hist if "split/latency_analytic" in m]
    else:
        per_round = [
            (m["seconds"] / m["steps"], (m["bytes_up"] + m["bytes_down"]) / m["steps"])
            for m in hist
            if m.get("steps")
        ]
        per_it = statistics.fmean(p[0] for p in per_round) if per_round else None
        bytes_it = statistics.fmean(p[1] for p in per_round) if per_round else None
        latency = []
    iterations = sum(int(m.get("steps", 0)) for m in hist)
    return [
        {
            "scenario": scenario,
            "method": name,
            "domains": domains,
            "seconds_per_iteration": per_it,
            "bytes_per_iteration": bytes_it,
            "latency": latency[-1] if latency else None,
            "cpu_seconds": cpu_seconds,
            "wall_seconds": wall,
            "rounds": fed.next_round,
            "iterations": iterations,
        }
        for name, domains in evaluated.items()
    ]


def _fmt(x: float | None, digits: int = 2) -> str:
    return "n/a" if x is None else f"{x:.{digits}f}"


def markdown_row(row: dict[str, Any]) -> str:
    names = list(row["domains"])
    published = PUBLISHED.get(row["scenario"], {})

    def per_domain(key: str) -> str:
        return " / ".join(f"{100 * row['domains'][d][f'tstr_{key}']:.2f}" for d in names)

    pub_acc = " / ".join(_fmt(published[d][0]) if d in published else "n/a" for d in names)
    # Ours minus published, in TSTR accuracy points: negative means short of it.
    gap = " / ".join(
        f"{100 * row['domains'][d]['tstr_accuracy'] - published[d][0]:+.2f}"
        if d in published
        else "n/a"
        for d in names
    )
    pub_rest = " / ".join(
        ", ".join(f"{v:.2f}" for v in published[d][1:]) if d in published else "n/a" for d in names
    )
    is_like = " / ".join(f"{row['domains'][d]['inception_like_score']:.2f}" for d in names)
    cells = [
        row["scenario"],
        row["method"],
        " / ".join(names),
        *(per_domain(k) for k in TSTR),
        pub_acc,
        gap,
        pub_rest,
        is_like,
        _fmt(row["latency"], 3),
        _fmt(row["seconds_per_iteration"], 2),
        _fmt(None if row["bytes_per_iteration"] is None else row["bytes_per_iteration"] / 1e6, 1),
        _fmt(row["cpu_seconds"], 0),
        f"{row['wall_seconds']:.0f}",
        str(row["rounds"]),
        str(row["iterations"]),
    ]
    return "| " + " | ".join(cells) + " |"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--scenarios", nargs="+", default=["S1", "S4", "S6"])
    parser.add_argument("--methods", nargs="+", default=list(METHODS), choices=list(METHODS))
    parser.add_argument("--minutes", type=float, default=15.0, help="wall-time budget per run")
    parser.add_argument(
        "--local-steps",
        type=int,
        default=10,
        help="local iterations per round (the recipes' 5 epochs are ~59 iterations, longer "
        "than a faithful budget allows; 0 keeps the recipe's)",
    )
    parser.add_argument(
        "--iterations",
        type=int,
        default=0,
        help="also end a run once this many local iterations are done (0: wall time only)",
    )
    parser.add_argument(
        "--curve-every", type=int, default=0, help="per-domain TSTR every N iterations (0: none)"
    )
    parser.add_argument("--curve-samples", type=int, default=10000)
    parser.add_argument("--curve-epochs", type=int, default=5)
    parser.add_argument(
        "--curve-results", type=Path, default=ROOT / "benchmarks/results/huscf_curve.md"
    )
    parser.add_argument("--tstr-samples", type=int, default=PAPER_TSTR_SAMPLES)
    parser.add_argument("--tstr-epochs", type=int, default=15, help="the paper's CNN: 15 epochs")
    parser.add_argument(
        "--tstr-schedule",
        choices=["cosine", "constant"],
        default="cosine",
        help="the final TSTR classifier's learning rate: cosine decay (fedgen's, every row "
        "before 2026-12-08) or constant (the authors' evaluation code: Adam 1e-3)",
    )
    parser.add_argument(
        "--compare-raw",
        action="store_true",
        help="with a moving average, also evaluate the weights as trained (a second row)",
    )
    parser.add_argument("--set", action="append", default=[], help="extra dotted.key=value")
    parser.add_argument("--runs-dir", type=Path, default=ROOT / "runs" / "huscf-table")
    parser.add_argument("--results", type=Path, default=ROOT / "benchmarks/results/huscf.md")
    parser.add_argument(
        "--resume",
        action="store_true",
        help="continue each run from its folder's newest checkpoint (runs longer than one "
        "session); each part ends with its own evaluation row",
    )
    args = parser.parse_args()
    if args.local_steps == 0:
        args.local_steps = None
    torch.set_num_threads(int(os.environ.get("FEDGEN_THREADS", "1")))
    args.results.parent.mkdir(parents=True, exist_ok=True)
    new_file = not args.results.exists()
    with open(args.results, "a") as f:
        if new_file:
            f.write(
                "# HuSCF-GAN and baselines at equal wall time\n\n"
                "Written by `benchmarks/huscf/table.py`. TSTR figures x100, per domain in the "
                "scenario's source order, each domain's client generator tested on that "
                "domain's real test split. Published: youssefga28/HuSCF-GAN "
                "Results/Scenario_*/tables/final_metrics.csv (GPU, 50 rounds x 5 epochs); "
                "published analytic latency 7.68 s/iteration (80 clients, GA).\n"
            )
        f.write(
            f"\n## {dt.datetime.now().isoformat(timespec='seconds')} (commit {current_commit()}) "
            f"on {machine_description()}\n\n"
            f"Command: `{' '.join([Path(sys.argv[0]).name, *sys.argv[1:]])}` "
            f"({args.minutes:g} min per run, local steps {args.local_steps or 'from recipe'}, "
            f"TSTR {args.tstr_samples} samples x {args.tstr_epochs} epochs, "
            f"{args.tstr_schedule} learning rate)\n\n"
            "| " + " | ".join(COLUMNS) + " |\n|" + "---|" * len(COLUMNS) + "\n"
        )
    for scenario in args.scenarios:
        for method in args.methods:
            print(f"== {scenario} {method} ({args.minutes:g} min)", flush=True)
            for row in run_one(scenario, method, args, args.runs_dir):
                line = markdown_row(row)
                with open(args.results, "a") as f:
                    f.write(line + "\n")
                print(line, flush=True)


if __name__ == "__main__":
    main()
