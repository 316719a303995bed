"""Language-model benchmark: held-out perplexity of federated fine-tuning against its bounds.

For one text recipe (default: LoRA on SmolLM2 over Debian's fortunes), at equal local
steps, each row one method, appended to ``benchmarks/results/lm.md`` as its run ends:

- ``base``: the model before any round (for LoRA: the pretrained base, adapters at zero);
- ``centralized``: one client holding every client's text, the same sample-visits per round;
- ``fedavg``: FedAvg of the federated tensors (for LoRA: of A and B, FedIT);
- ``ffa``: FFA-LoRA (A frozen at a shared seed, only B trained and sent), LoRA only;
- ``personalized``: the fedavg run's global model fine-tuned on each client's own text
  (``eval.personalize_steps``), reported from the same run.

Columns: mean and worst-decile (90th percentile over clients) held-out perplexity, the
share of the base-to-centralized gap closed, bytes per round (up + down, as counted by
the round loop) against full fine-tuning's (every parameter of the model, both ways, for
every client of the round), and wall seconds.

    .venv/bin/python benchmarks/lm.py [--recipe configs/lm_lora_fortunes.yaml]
        [--methods base centralized fedavg ffa] [--set key=value ...]
"""

from __future__ import annotations

import argparse
import json
import tempfile
import time
from pathlib import Path
from typing import Any

from fedgen.config import load_config
from fedgen.experiment import build_experiment, evaluate_task, run_experiment
from fedgen.report.results_table import ResultsTable, current_commit

ROOT = Path(__file__).resolve().parents[1]
COLUMNS = [
    "commit",
    "method",
    "rounds",
    "local steps",
    "perplexity (mean)",
    "perplexity (worst decile)",
    "gap closed",
    "bytes / round",
    "full fine-tuning bytes / round",
    "share of full",
    "seconds",
]
#: What each method changes in the recipe.
METHODS: dict[str, list[str]] = {
    "base": [],
    "centralized": ["federation.centralized=true"],
    "fedavg": [],
    "ffa": ["task.params.method=ffa"],
}


def run_method(recipe: Path, sets: list[str], method: str, work: Path) -> dict[str, Any]:
    """Train (or, for ``base``, only evaluate) one method; its figures."""
    cfg = load_config(recipe, [*sets, *METHODS[method]])
    t0 = time.perf_counter()
    if method == "base":
        exp = build_experiment(cfg)
        figures = evaluate_task(exp, tstr=False)
        total = sum(p.numel() for m in exp.task.modules.values() for p in m.parameters())
        return {**figures, "seconds": time.perf_counter() - t0, "parameters_all": total}
    out = work / method
    summary = run_experiment(cfg, out, progress=False)
    lines = [json.loads(x) for x in (out / "metrics.jsonl").read_text().splitlines()]
    per_round = [m.get("bytes_up", 0) + m.get("bytes_down", 0) for m in lines]
    clients = [m.get("clients", 0) for m in lines]
    return {
        **summary,
        "seconds": time.perf_counter() - t0,
        "bytes_per_round": sum(per_round) / max(len(per_round), 1),
        "clients_per_round": sum(clients) / max(len(clients), 1),
        "rounds_run": summary["rounds"],
        "local_steps": cfg.federation.local_steps,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--recipe", type=Path, default=ROOT / "configs/lm_lora_fortunes.yaml")
    parser.add_argument("--methods", nargs="+", default=list(METHODS), choices=list(METHODS))
    parser.add_argument("--set", dest="sets", action="append", default=[])
    parser.add_argument("--personalize-steps", type=int, default=10)
    parser.add_argument("--out", type=Path, default=ROOT / "benchmarks/results/lm.md")
    args = parser.parse_args()

    table = ResultsTable(args.out, COLUMNS)
    table.start(
        f"Federated LM fine-tuning: {args.recipe.name}",
        notes=[
            "perplexity: exp(mean next-token NLL) on each client's own held-out text; mean "
            "over clients and the 90th percentile over clients (worst decile)",
            "gap closed: (base - method) / (base - centralized) in mean perplexity",
            "full fine-tuning bytes / round: every parameter of the model as float32, down "
            "and up, for every client of the round",
            f"personalized: the fedavg run's global model fine-tuned "
            f"{args.personalize_steps} steps on each client's own text",
        ],
    )
    commit = current_commit()
    results: dict[str, dict[str, Any]] = {}
    with tempfile.TemporaryDirectory(prefix="lm-bench-") as tmp:
        for method in args.methods:
            sets = list(args.sets)
            if method == "fedavg":
                sets.append(f"eval.personalize_steps={args.personalize_steps}")
            results[method] = r = run_method(args.recipe, sets, method, Path(tmp))
            base, central = results.get("base"), results.get("centralized")
            gap = None
            if base and central and method not in ("base",):
                span = base["perplexity"] - central["perplexity"]
                gap = (base["perplexity"] - r["perplexity"]) / span if span else None
            full = None
            if base and "clients_per_round" in r:
                full = 2 * 4 * base["parameters_all"] * r["clients_per_round"]
            row = {
                "commit": commit,
                "method": method,
                "rounds": r.get("rounds_run", 0),
                "local steps": r.get("local_steps"),
                "perplexity (mean)": r["perplexity"],
                "perplexity (worst decile)": r["perplexity_worst_decile"],
                "gap closed": gap,
                "bytes / round": r.get("bytes_per_round"),
                "full fine-tuning bytes / round": full,
                "share of full": (r["bytes_per_round"] / full) if full else None,
                "seconds": r["seconds"],
            }
            print(table.append(row), flush=True)
            if method == "fedavg" and "perplexity_personalized" in r:
                personal = {
                    "commit": commit,
                    "method": "personalized",
                    "rounds": r["rounds_run"],
                    "local steps": r["local_steps"],
                    "perplexity (mean)": r["perplexity_personalized"],
                    "perplexity (worst decile)": r["perplexity_personalized_worst_decile"],
                }
                print(table.append(personal), flush=True)


if __name__ == "__main__":
    main()
