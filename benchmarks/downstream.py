"""Downstream benchmark: does a federated generator help the federated classifier?

For each setting (data set, clients, Dirichlet alpha, generator), one experiment of the
recipe ``configs/fmnist_cvae_downstream.yaml``: the conditional generator is federated
first, then a ``SmallCNN`` classifier is trained by FedAvg at equal rounds on
(a) real data only, (b) clients topped up with the generator's samples (GeFL), (c) real
data with the server fine-tuning on synthetic samples after every round; beside them the
server's classifier on synthetic data alone (TSTR; the arm that inherits the generator's
DP) and one-shot federation (FedCVAE-Ens: every client sends a cVAE decoder once), and
last real-only FedAvg at ``--ref-rounds`` rounds, the one-shot goal's reference. Each
row is appended to ``benchmarks/results/downstream.md`` as soon as it is measured.

    python benchmarks/downstream.py [--settings fmnist-0.1-10-cvae mnist-0.1-10-cvae]
        [--gen-rounds 20] [--rounds 20] [--local-steps 10] [--ref-rounds 100]
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path
from typing import Any

from fedgen.config import load_config
from fedgen.downstream.classifier_federation import ArmResult, federate_classifier
from fedgen.downstream.run import run_downstream
from fedgen.experiment import load_run
from fedgen.report.results_table import ResultsTable

ROOT = Path(__file__).resolve().parents[1]
RECIPE = ROOT / "configs" / "fmnist_cvae_downstream.yaml"
SOURCES = {"fmnist": "fashion-mnist", "mnist": "mnist"}
COLUMNS = [
    "data",
    "clients",
    "alpha",
    "generator",
    "arm",
    "test accuracy",
    "worst-class accuracy",
    "rounds",
    "bytes",
    "seconds",
    "synthetic examples",
    "classifier MIA AUC",
    "generator MIA AUC",
]


def parse_setting(text: str) -> dict[str, Any]:
    """``fmnist-0.1-10-cvae`` -> data set, alpha, clients, generator task."""
    data, alpha, clients, task = text.split("-")
    return {"data": data, "alpha": float(alpha), "clients": int(clients), "task": task}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--settings", nargs="+", default=["fmnist-0.1-10-cvae"])
    parser.add_argument("--gen-rounds", type=int, default=20)
    parser.add_argument("--gen-local-steps", type=int, default=20)
    parser.add_argument("--rounds", type=int, default=20)
    parser.add_argument("--local-steps", type=int, default=10)
    parser.add_argument("--ref-rounds", type=int, default=100)
    parser.add_argument("--one-shot-steps", type=int, default=200)
    parser.add_argument("--out", type=Path, default=ROOT / "benchmarks" / "runs" / "downstream")
    parser.add_argument("--table", type=Path, default=ROOT / "benchmarks/results/downstream.md")
    args = parser.parse_args()

    table = ResultsTable(args.table, COLUMNS)
    table.start(
        "downstream",
        [
            f"generator: {args.gen_rounds} rounds x {args.gen_local_steps} local steps, all "
            "clients a round (FedAvg, EMA 0.9), backend inprocess",
            f"classifier (SmallCNN, 421k parameters): FedAvg, {args.rounds} rounds x "
            f"{args.local_steps} local steps of 64, all clients a round, Adam 1e-3; the same "
            "rounds for arms real, topup, server_finetune",
            "topup: every class up to the client's largest (ratio 1), at most 1000 a class; "
            "server_finetune: 50 Adam steps on 5,000 balanced synthetic images after every "
            "round; synthetic: 3 epochs on those 5,000 alone",
            f"one_shot: each client trains a cVAE {args.one_shot_steps} steps and sends its "
            "decoder once; the server draws 20,000 images by the reported label counts "
            "and trains 3 epochs",
            "bytes: every message as fedgen.wire encodes it, up and down; seconds: wall "
            "clock on one shared core (taskset -c 1), the machine's load 4-7",
            "MIA: loss attack (Yeom et al. 2018) on the classifier, 1,000 clients' training "
            "images vs 1,000 test images; generator: the best of its white-box and "
            "GAN-Leaks AUCs on the same kind of sets",
        ],
    )
    for text in args.settings:
        s = parse_setting(text)
        name = f"{s['data']}-{s['task']}-dir{s['alpha']:g}-{s['clients']}c"
        out = args.out / f"{name}-{time.strftime('%Y%m%d-%H%M%S')}"
        overrides = [
            f"name={name}",
            f"data.sources=[{SOURCES[s['data']]}]",
            f"data.num_clients={s['clients']}",
            f"data.partition.params.alpha={s['alpha']}",
            f"task.name={s['task']}",
            "backend.name=inprocess",
            f"federation.rounds={args.gen_rounds}",
            f"federation.local_steps={args.gen_local_steps}",
            "eval.final=false",
            f"downstream.rounds={args.rounds}",
            f"downstream.local_steps={args.local_steps}",
            f"downstream.one_shot_steps={args.one_shot_steps}",
        ]
        cfg = load_config(RECIPE, overrides)
        common = {
            "data": s["data"],
            "clients": s["clients"],
            "alpha": s["alpha"],
            "generator": s["task"],
        }
        rows = RowWriter(table, common, out)
        t0 = time.perf_counter()
        summary = run_downstream(cfg, out, progress=False, on_arm=rows)
        print(f"{name}: generator and arms in {time.perf_counter() - t0:.0f} s", flush=True)
        if args.ref_rounds and summary.get("status") == "completed":
            exp = load_run(out)
            ref = federate_classifier(
                f"real ({args.ref_rounds} rounds)",
                exp.data.clients,
                exp.data.test,
                rounds=args.ref_rounds,
                local_steps=args.local_steps,
                fraction=1.0,
                batch_size=64,
                lr=1e-3,
                seed=cfg.seed,
            )
            from fedgen.attacks.classifier_membership import classifier_membership
            from fedgen.attacks.membership import draw_candidates
            from fedgen.downstream.run import ATTACK_CANDIDATES, pooled
            from fedgen.seeding import torch_generator

            members = pooled(exp.data.clients, exp.data.train)
            cands = draw_candidates(
                members,
                exp.data.test,
                ATTACK_CANDIDATES,
                torch_generator(cfg.seed, "downstream", "mia"),
            )
            rows(ref, {"membership": classifier_membership(ref.model, *cands)})


class RowWriter:
    """Appends one table row per finished arm, with the generator's MIA AUC beside it."""

    def __init__(self, table: ResultsTable, base: dict[str, Any], out: Path) -> None:
        self.table, self.base, self.out = table, base, out
        self.gen_auc: float | None = None

    def __call__(self, arm: ArmResult, record: dict[str, Any]) -> None:
        if self.gen_auc is None and (self.out / "downstream.json").is_file():
            record_file = json.loads((self.out / "downstream.json").read_text())
            figures = record_file["generator_membership"]
            aucs = [v for k, v in figures.items() if k.endswith("_auc")]
            self.gen_auc = max(aucs) if aucs else None
        row = {
            **self.base,
            "arm": arm.name,
            "test accuracy": arm.accuracy.accuracy,
            "worst-class accuracy": arm.accuracy.worst_class,
            "rounds": arm.rounds,
            "bytes": arm.bytes_up + arm.bytes_down,
            "seconds": round(arm.seconds, 1),
            "synthetic examples": arm.synthetic_examples,
            "classifier MIA AUC": record["membership"]["loss_auc"],
            "generator MIA AUC": self.gen_auc,
        }
        print(self.table.append(row), flush=True)


if __name__ == "__main__":
    main()
