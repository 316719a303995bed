"""Seconds per round of a real Flower deployment on loopback against the simulation.

One run, side by side: the recipe (default: the default experiment, the cGAN on
Fashion-MNIST, 10 clients, Dirichlet 0.5, 4 clients a round) deployed on a local
SuperLink and one SuperNode per client (TLS, node authentication; ``fedgen.deploy.
local``), then simulated in process and on the recipe's own simulation backend,
with the same seed, evaluation off. Per mode: median seconds per round, what it
adds to the in-process round (the deployment's overhead: Flower's polling and
ClientApp processes, fedgen's per-message start-up), bytes per round, and whether
the final global state equals the in-process one bit for bit.

The overhead is split further by measuring, each in a fresh process, what a
deployed client pays per message before it trains: importing fedgen's ClientApp
and building its parts from the recipe (``RecipeClientSide.open``). The rest of
the overhead is Flower's: its SuperNode polls the SuperLink every 3 s, its
SuperExec polls every 1 s, and it starts a new ClientApp process per message.

    taskset -c 0 .venv/bin/python benchmarks/deployment.py [--recipe configs/x.yaml]
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
COLUMNS = [
    "mode",
    "seconds / round (median)",
    "rounds",
    "overhead / round vs in-process",
    "start-up s",
    "bytes / round",
    "same model as in-process",
]


def round_seconds(run_dir: Path) -> list[float]:
    """The ``seconds`` of each round in a run folder's metrics."""
    lines = (run_dir / "metrics.jsonl").read_text().splitlines()
    return [float(json.loads(line)["seconds"]) for line in lines]


def round_bytes(run_dir: Path) -> float:
    """Mean bytes up + down per round."""
    lines = [json.loads(x) for x in (run_dir / "metrics.jsonl").read_text().splitlines()]
    return statistics.mean(m.get("bytes_up", 0) + m.get("bytes_down", 0) for m in lines)


def final_state(run_dir: Path) -> dict[str, Any]:
    from fedgen.engine.checkpoint import list_checkpoints, load_checkpoint

    _, last = list_checkpoints(run_dir / "checkpoints")[-1]
    return load_checkpoint(last)["federation"]["global_state"]


def same(a: dict[str, Any], b: dict[str, Any]) -> bool:
    import torch

    return a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


def fresh_process_seconds(code: str) -> float:
    """Seconds a fresh interpreter reports for ``code`` (which prints them)."""
    done = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, check=True, cwd=ROOT
    )
    return float(done.stdout.strip().splitlines()[-1])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--recipe", type=Path, default=ROOT / "configs" / "fmnist_cgan.yaml")
    parser.add_argument("--rounds", type=int, default=4)
    parser.add_argument("--set", dest="overrides", action="append", default=[])
    parser.add_argument("--out", type=Path, default=ROOT / "benchmarks/results/deployment.md")
    args = parser.parse_args()

    from fedgen.config import load_config
    from fedgen.deploy import local
    from fedgen.experiment import run_experiment
    from fedgen.report.results_table import ResultsTable

    overrides = [
        *args.overrides,
        f"federation.rounds={args.rounds}",
        "eval.every=0",
        "eval.final=false",
        "noise_seed=root",
        # One torch thread everywhere: floating-point sums split across threads differ in
        # the last bits, so bit-identity across backends holds at equal thread counts.
        "threads=1",
    ]
    cfg = load_config(args.recipe, overrides)
    nodes = cfg.data.num_clients
    table = ResultsTable(args.out, COLUMNS)
    table.start(
        f"Flower deployment on loopback against simulation: {cfg.name}",
        notes=[
            f"recipe {args.recipe.relative_to(ROOT)} with {overrides}; {nodes} SuperNodes "
            "(one client each) and a SuperLink with TLS and node authentication, all on "
            "this machine; evaluation off",
            "seconds / round: the loop's own round time (metrics.jsonl); start-up: wall "
            "time before round 1 (deployment: flwr run, ServerApp start, the hello)",
        ],
        command=" ".join([Path(sys.executable).name, *sys.argv]),
    )
    work = Path(tempfile.mkdtemp(prefix="fedgen-deploy-bench-"))
    # What a deployed client pays per message before training, in fresh processes.
    import_s = fresh_process_seconds(
        "import time; t = time.perf_counter(); import fedgen.deploy.client_app; "
        "print(time.perf_counter() - t)"
    )
    recipe_json = json.dumps(cfg.model_dump(mode="json"))
    open_s = fresh_process_seconds(
        "import time; from fedgen.experiment import RecipeClientSide; "
        f"side = RecipeClientSide.from_json({recipe_json!r}); "
        "t = time.perf_counter(); side.open(); print(time.perf_counter() - t)"
    )
    table.append(
        {
            "mode": "a deployed client's start-up per message (fresh process): import "
            f"{import_s:.2f} s + build from recipe {open_s:.2f} s",
            "seconds / round (median)": import_s + open_s,
        }
    )

    # In process first: the reference every other mode is compared with.
    t0 = time.perf_counter()
    simulated = work / "inprocess"
    run_experiment(
        load_config(args.recipe, [*overrides, "backend.name=inprocess", "backend.params={}"]),
        simulated,
        progress=False,
    )
    base = round_seconds(simulated)
    reference = final_state(simulated)
    table.append(
        {
            "mode": "simulation, inprocess",
            "seconds / round (median)": statistics.median(base),
            "rounds": len(base),
            "overhead / round vs in-process": 0.0,
            "start-up s": time.perf_counter() - t0 - sum(base),
            "bytes / round": round_bytes(simulated),
            "same model as in-process": "yes",
        }
    )
    if cfg.backend.name not in ("inprocess", "flower"):
        t0 = time.perf_counter()
        own = work / cfg.backend.name
        run_experiment(cfg, own, progress=False)
        secs = round_seconds(own)
        table.append(
            {
                "mode": f"simulation, {cfg.backend.name} {cfg.backend.params}",
                "seconds / round (median)": statistics.median(secs),
                "rounds": len(secs),
                "overhead / round vs in-process": statistics.median(secs) - statistics.median(base),
                "start-up s": time.perf_counter() - t0 - sum(secs),
                "bytes / round": round_bytes(own),
                "same model as in-process": "yes" if same(final_state(own), reference) else "NO",
            }
        )

    folder = work / "deployment"
    t0 = time.perf_counter()
    local.up(folder, nodes)
    up_s = time.perf_counter() - t0
    try:
        recipe_file = work / "recipe.yaml"
        recipe_file.write_text(cfg.to_yaml())
        deployed = work / "flower"
        t0 = time.perf_counter()
        outcome = local.run(folder, recipe_file, deployed, timeout=3600)
        wall = time.perf_counter() - t0
    finally:
        local.down(folder)
    if not outcome.ok:
        table.append({"mode": f"flower: the run ended {outcome.status}; log {outcome.log}"})
        return
    secs = round_seconds(deployed)
    table.append(
        {
            "mode": f"flower deployment ({nodes} SuperNodes; deploy up took {up_s:.1f} s)",
            "seconds / round (median)": statistics.median(secs),
            "rounds": len(secs),
            "overhead / round vs in-process": statistics.median(secs) - statistics.median(base),
            "start-up s": wall - sum(secs),
            "bytes / round": round_bytes(deployed),
            "same model as in-process": "yes" if same(final_state(deployed), reference) else "NO",
        }
    )


if __name__ == "__main__":
    main()
