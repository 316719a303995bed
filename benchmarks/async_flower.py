"""Asynchronous and peer-to-peer modes deployed on Flower SuperNodes, against simulation.

One run, on loopback: a local SuperLink and one SuperNode per client (TLS, node
authentication; ``fedgen.deploy.local``), the tiny cGAN on MNIST, three clients.
Modes: FedBuff on the simulated clock and gossip on a ring (each also simulated in
process with the same seed: the final model must be equal bit for bit), and FedBuff
on the wall clock (real arrivals: no simulation to equal, so the table gives its
staleness and whether its ledger verifies). Seconds per server step are Flower's
transport plus the clients' compute on this machine.

    .venv/bin/python benchmarks/async_flower.py [--out benchmarks/results/deployment.md]
"""

from __future__ import annotations

import argparse
import json
import statistics
import tempfile
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
COLUMNS = [
    "mode",
    "server steps",
    "seconds / step (median)",
    "max staleness",
    "same model as in-process",
    "ledger verifies",
]
BASE = """\
threads: 1
seed: 4
data:
  sources: [mnist]
  data_dir: {data}
  num_clients: 3
  partition: {{kind: iid, params: {{}}}}
task:
  params: {{batch_size: 16, generator_width: 8, discriminator_width: 8}}
eval: {{every: 0, final: false}}
backend: {{name: inprocess}}
strategy:
  params: {{fraction: 1.0, min_clients: 1}}
"""
MODES = {
    "fedbuff, simulated clock (K=2 of 3, lognormal speeds)": (
        "federation: {rounds: 4, local_steps: 2, mode: fedbuff, clock: {speeds: lognormal},"
        " fedbuff: {buffer_size: 2, concurrency: 3}}\n",
        True,
    ),
    "fedbuff, wall clock (K=2 of 3)": (
        "federation: {rounds: 4, local_steps: 2, mode: fedbuff,"
        " fedbuff: {buffer_size: 2, concurrency: 3, timing: wall}}\n",
        False,
    ),
    "gossip, ring": (
        "federation: {rounds: 3, local_steps: 2, mode: gossip, gossip: {topology: ring}}\n",
        True,
    ),
}


def final_state(run_dir: Path) -> dict[str, Any]:
    from fedgen.engine.checkpoint import list_checkpoints, load_checkpoint

    _, last = list_checkpoints(run_dir / "checkpoints")[-1]
    state: dict[str, Any] = load_checkpoint(last)["federation"]["global_state"]
    return state


def main() -> None:
    import torch

    from fedgen.config import load_config
    from fedgen.data.sources import resolve_data_dir
    from fedgen.deploy import local
    from fedgen.experiment import run_experiment
    from fedgen.ledger import verify_run
    from fedgen.report.results_table import ResultsTable

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=ROOT / "benchmarks/results/deployment.md")
    args = parser.parse_args()
    work = Path(tempfile.mkdtemp(prefix="fedgen-async-flower-"))
    table = ResultsTable(args.out, COLUMNS)
    table.start(
        "Asynchronous and gossip modes on Flower (loopback) against simulation",
        notes=[
            "tiny cGAN (widths 8, batch 16) on MNIST, 3 clients (iid), 2 local steps a job, "
            "3 SuperNodes and a SuperLink with TLS and node authentication on this machine",
            "seconds / step: the loop's own time per server step (metrics.jsonl), deployed",
        ],
    )
    deployment = local.up(work / "deployment", 3)
    try:
        for mode, (rest, comparable) in MODES.items():
            recipe = work / "recipe.yaml"
            recipe.write_text(BASE.format(data=resolve_data_dir()) + rest)
            deployed = work / f"deployed-{len(list(work.iterdir()))}"
            t0 = time.monotonic()
            outcome = local.run(Path(deployment.folder), recipe, deployed, timeout=1800)
            if not outcome.ok:
                table.append({"mode": mode, "server steps": f"failed: {outcome.status}"})
                continue
            lines = [json.loads(x) for x in (deployed / "metrics.jsonl").read_text().splitlines()]
            same = "-"
            if comparable:
                simulated = work / f"simulated-{len(list(work.iterdir()))}"
                run_experiment(load_config(recipe), simulated, progress=False)
                a, b = final_state(deployed), final_state(simulated)
                same = "yes" if all(torch.equal(a[k], b[k]) for k in a) else "NO"
            row = table.append(
                {
                    "mode": mode,
                    "server steps": len(lines),
                    "seconds / step (median)": statistics.median(m["seconds"] for m in lines),
                    "max staleness": max((m.get("staleness_max", 0) for m in lines), default=0),
                    "same model as in-process": same,
                    "ledger verifies": "yes" if verify_run(deployed).ok else "NO",
                }
            )
            print(row, f"({time.monotonic() - t0:.0f} s)", flush=True)
    finally:
        local.down(Path(deployment.folder))


if __name__ == "__main__":
    main()
