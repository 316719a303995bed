"""Ledger verification speed: ``verify_run`` over a 1,000-round federation's ledger.

Builds, in a temporary run folder, the ledger of a run with ``--clients`` clients (each with its
own Ed25519 key) over ``--rounds`` rounds through the library's own API: run_start, one enrol
per client, and per round a round_start, one signed update per client (over the digest of a
small real delta), an aggregate and a signed tree head; a real checkpoint file every
``--checkpoint-every`` rounds. Then times ``verify_run`` on it, which recomputes every leaf hash
and signed root, proves and checks consistency between successive heads and the inclusion of
every entry, and checks every update signature, and prints the seconds.

    .venv/bin/python benchmarks/ledger_verify.py [--rounds 1000] [--clients 10]
"""

from __future__ import annotations

import argparse
import secrets
import tempfile
import time
from pathlib import Path

import torch

from fedgen.ledger import (
    LEDGER_FILE,
    Ledger,
    file_digest,
    generate_key,
    public_key_hex,
    sign,
    state_digest,
    update_message,
    verify_run,
)


def build_ledger(run_dir: Path, rounds: int, clients: int, checkpoint_every: int) -> int:
    """Write the run's ledger; return its number of entries."""
    server = generate_key()
    keys = {c: generate_key() for c in range(clients)}
    run_id = secrets.token_hex(16)
    gen = torch.Generator().manual_seed(0)
    state = {"w": torch.randn(16, 8, generator=gen), "b": torch.zeros(16)}
    (run_dir / "checkpoints").mkdir(parents=True)
    with Ledger.open(run_dir / LEDGER_FILE, create=True) as ledger:
        ledger.append(
            "run_start",
            {
                "run_id": run_id,
                "server_public_key": public_key_hex(server),
                "fingerprint": "benchmark",
                "rounds": rounds,
            },
        )
        for c, key in keys.items():
            ledger.append("enrol", {"client_id": c, "public_key": public_key_hex(key)})
        ledger.sign_head(None, server)
        for r in range(rounds):
            cohort = list(keys)
            ledger.append(
                "round_start",
                {
                    "round": r,
                    "global_digest": state_digest(state),
                    "cohort": cohort,
                    "config": {"lr": 0.01},
                },
            )
            deltas = []
            for c in cohort:
                delta = {k: 0.01 * torch.randn(v.shape, generator=gen) for k, v in state.items()}
                deltas.append(delta)
                digest = state_digest(delta)
                ledger.append(
                    "update",
                    {
                        "round": r,
                        "client_id": c,
                        "digest": digest,
                        "num_examples": 100,
                        "signature": sign(keys[c], update_message(run_id, r, c, digest)),
                    },
                )
            state = {k: v + sum(d[k] for d in deltas) / len(deltas) for k, v in state.items()}
            ledger.append(
                "aggregate",
                {
                    "round": r,
                    "digest": state_digest(state),
                    "secure": False,
                    "sum_digest": None,
                    "clients": cohort,
                },
            )
            if (r + 1) % checkpoint_every == 0:
                path = run_dir / "checkpoints" / f"round_{r:04d}.ckpt"
                torch.save({"round": r, "state": state}, path.with_suffix(".tmp"))
                ledger.append(
                    "checkpoint",
                    {
                        "round": r,
                        "file": f"checkpoints/{path.name}",
                        "digest": file_digest(path.with_suffix(".tmp")),
                    },
                )
                path.with_suffix(".tmp").replace(path)
            ledger.sign_head(r, server)
            if (r + 1) % 100 == 0:
                print(f"  built round {r + 1}/{rounds}", flush=True)
        return ledger.size


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--rounds", type=int, default=1000)
    parser.add_argument("--clients", type=int, default=10)
    parser.add_argument("--checkpoint-every", type=int, default=100)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="ledger-bench-") as tmp:
        run_dir = Path(tmp) / "run"
        start = time.perf_counter()
        size = build_ledger(run_dir, args.rounds, args.clients, args.checkpoint_every)
        built = time.perf_counter() - start
        start = time.perf_counter()
        report = verify_run(run_dir)
        seconds = time.perf_counter() - start
    if not report.ok:
        raise SystemExit("\n".join(report.lines()))
    print(f"built {size} entries ({args.rounds} rounds x {args.clients} updates) in {built:.1f} s")
    print(f"verify_run: {seconds:.2f} s ({seconds / args.rounds * 1000:.2f} ms per round)")


if __name__ == "__main__":
    main()
