"""Personalization benchmark (issue 14): global vs fine-tuned vs FedPer vs Ditto.

The cGAN on Fashion-MNIST across 10 clients with Dirichlet(0.1) label skew
(``configs/fmnist_cgan_personal.yaml``). Three federations of the same budget:

- ``fedavg``: the global model, and each client's copy of it fine-tuned on its own
  shard after the last round (``eval.personalize_steps``): rows ``global`` and
  ``fine-tuned``;
- ``fedper``: FedPer's personal layers (the generator's class embedding and output
  layer, the discriminator's projection embedding and head stay with each client);
- ``ditto``: Ditto, each client's personal GAN pulled toward the global one (``lam``).

Each row gives per-client TSTR and Frechet distance on the client's own label
distribution (``fedgen.eval.per_client``), mean and worst decile over the 10 clients,
beside the same run's global model, and the ceiling: real images of each client's
classes scored in place of samples (what a perfect class-conditional generator would
score; its gain column is the most any personalization could add). The goal: a
personalized model raises the worst-decile client's TSTR by >= 10 points over the
global model of the FedAvg run.
A row is appended to ``benchmarks/results/personalization.md`` as each is measured.

    PYTHONPATH=src taskset -c 0 .venv/bin/python benchmarks/personalization.py \
        [--rounds 24] [--only fedavg fedper ditto]
"""

from __future__ import annotations

import argparse
import shlex
import sys
import time
from pathlib import Path
from typing import Any

from fedgen.config import load_config
from fedgen.experiment import run_experiment
from fedgen.report.results_table import ResultsTable

RECIPE = Path(__file__).resolve().parents[1] / "configs" / "fmnist_cgan_personal.yaml"
RESULTS = Path(__file__).resolve().parent / "results" / "personalization.md"
#: FedPer's personal layers of the cGAN (``fedgen.tasks.gan``): generator.body.5 is the
#: last transposed convolution (14x14 -> 28x28), the output layer.
FEDPER_LAYERS = "[generator.embed, generator.body.5, discriminator.embed, discriminator.head]"
METHODS: dict[str, list[str]] = {
    "fedavg": [],
    "fedper": [f"task.params.personal={FEDPER_LAYERS}"],
    "ditto": ["strategy.name=ditto", "strategy.params={fraction: 0.5, ema_decay: 0.9, lam: 0.1}"],
}
COLUMNS = [
    "method",
    "model",
    "client TSTR mean",
    "client TSTR worst decile",
    "client FD mean",
    "client FD worst decile",
    "same run's global: client TSTR worst decile",
    "global TSTR (balanced)",
    "worst-decile gain over FedAvg global (points)",
    "rounds",
    "seconds",
]


#: How the table names each model of ``summary.json``'s per-client keys.
MODEL_NAMES = {
    "global": "global",
    "finetuned": "fine-tuned",
    "personal": "personal",
    "real": "real images (ceiling)",
}


def row(
    method: str, model: str, summary: dict[str, Any], reference: float | None, seconds: float
) -> dict[str, object]:
    """One table row of ``summary``'s per-client figures for ``model`` (a key of
    ``MODEL_NAMES``)."""
    worst = summary.get(f"client_tstr_accuracy_{model}_worst_decile")
    gain = None if reference is None or worst is None else 100 * (worst - reference)
    return {
        "method": method,
        "model": MODEL_NAMES[model],
        "client TSTR mean": summary.get(f"client_tstr_accuracy_{model}"),
        "client TSTR worst decile": worst,
        "client FD mean": summary.get(f"client_frechet_distance_{model}"),
        "client FD worst decile": summary.get(f"client_frechet_distance_{model}_worst_decile"),
        "same run's global: client TSTR worst decile": summary.get(
            "client_tstr_accuracy_global_worst_decile"
        ),
        "global TSTR (balanced)": summary.get("tstr_accuracy"),
        "worst-decile gain over FedAvg global (points)": gain,
        "rounds": summary.get("rounds"),
        "seconds": round(seconds),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=24)
    parser.add_argument("--only", nargs="*", default=list(METHODS), choices=list(METHODS))
    parser.add_argument("--runs", type=Path, default=Path("benchmarks/runs/personalization"))
    parser.add_argument("--set", action="append", default=[], help="extra dotted overrides")
    parser.add_argument("--results", type=Path, default=RESULTS)
    args = parser.parse_args()
    table = ResultsTable(args.results, COLUMNS)
    # "global TSTR (balanced)" is the federated tensors' with FedPer's layers at their
    # initial values, as in the sections already in the results file.
    base = load_config(RECIPE, [f"federation.rounds={args.rounds}", "eval.model=global", *args.set])
    table.start(
        "cGAN, Fashion-MNIST, 10 clients, Dirichlet 0.1",
        notes=[
            f"recipe {RECIPE.name}: {args.rounds} rounds x 5 of 10 clients x "
            f"{base.federation.local_steps} local steps, EMA 0.9 on the global model; "
            f"per-client figures from {base.eval.per_client_samples} samples per client "
            f"with its label proportions; fine-tuned: {base.eval.personalize_steps} steps "
            "on the client's shard after the last round",
            f"FedPer personal layers {FEDPER_LAYERS}; Ditto lam 0.1, personal steps = local steps",
            "worst decile: 10th percentile over clients of TSTR (90th of FD); gain: worst-"
            "decile TSTR minus the FedAvg run's global model's, in points",
        ],
        command="PYTHONPATH=src taskset -c 0 " + shlex.join([sys.executable, *sys.argv]),
    )
    reference: float | None = None
    for method in args.only:
        cfg = load_config(RECIPE, [f"federation.rounds={args.rounds}", *args.set, *METHODS[method]])
        cfg = cfg.model_copy(update={"name": f"{cfg.name}-{method}"})
        out = args.runs / f"{method}-r{args.rounds}-{int(time.time())}"
        t0 = time.perf_counter()
        summary = run_experiment(cfg, out, progress=False)
        seconds = time.perf_counter() - t0
        if method == "fedavg":
            reference = summary.get("client_tstr_accuracy_global_worst_decile")
        # The ceiling (real images in place of samples) is the same for every method of a
        # seed: it is given once, with FedAvg's rows.
        models = (
            ["global", "finetuned", "real"] if method == "fedavg" else ["personal", "finetuned"]
        )
        for model in models:
            print(table.append(row(method, model, summary, reference, seconds)), flush=True)


if __name__ == "__main__":
    main()
