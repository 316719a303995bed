"""Build real run folders for the ledger tests with the library's own API.

Each round: a round_start carrying the digest of the global state (a small real torch state
dict), one update per client signed with the client's own Ed25519 key over the digest of its
real delta, optional failures, an aggregate over the new global state, a real checkpoint file
(``torch.save``) logged before it is renamed into place, and a signed tree head. Beside the
ledger, a real ``config.yaml`` whose fingerprint run_start signs, as ``fedgen run`` writes.
"""

from __future__ import annotations

import json
import secrets
import sqlite3
from dataclasses import dataclass, field
from pathlib import Path

import torch
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from fedgen.config import load_config
from fedgen.ledger import (
    LEDGER_FILE,
    Ledger,
    file_digest,
    generate_key,
    leaf_data,
    public_key_hex,
    sign,
    state_digest,
    update_message,
)
from fedgen.ledger.merkle import leaf_hash


@dataclass
class Run:
    run_dir: Path
    server_key: Ed25519PrivateKey
    client_keys: dict[int, Ed25519PrivateKey]
    run_id: str
    state: dict[str, torch.Tensor]
    generator: torch.Generator
    anchors: list[tuple[int, str]] = field(default_factory=list)

    @property
    def ledger_path(self) -> Path:
        return self.run_dir / LEDGER_FILE


def write_config(run_dir: Path, *overrides: str) -> str:
    """Write the default recipe (with ``key=value`` overrides) as the run's ``config.yaml``;
    return its fingerprint."""
    cfg = load_config(None, list(overrides), validate_components=False)
    (run_dir / "config.yaml").write_text(cfg.to_yaml())
    return cfg.fingerprint()


def start_run(run_dir: Path, clients: int = 3, rounds: int = 4, seed: int = 0) -> Run:
    """config.yaml, then run_start, one enrol per client and the first tree head."""
    run_dir.mkdir(parents=True, exist_ok=True)
    fingerprint = write_config(run_dir)
    generator = torch.Generator().manual_seed(seed)
    run = Run(
        run_dir=run_dir,
        server_key=generate_key(),
        client_keys={c: generate_key() for c in range(clients)},
        run_id=secrets.token_hex(16),
        state={
            "layer.weight": torch.randn(4, 3, generator=generator),
            "layer.bias": torch.zeros(4),
        },
        generator=generator,
    )
    with Ledger.open(run.ledger_path, create=True) as ledger:
        ledger.append(
            "run_start",
            {
                "run_id": run.run_id,
                "server_public_key": public_key_hex(run.server_key),
                "fingerprint": fingerprint,
                "rounds": rounds,
            },
        )
        for c, key in run.client_keys.items():
            ledger.append("enrol", {"client_id": c, "public_key": public_key_hex(key)})
        ledger.sign_head(None, run.server_key)
    return run


def log_round(
    run: Run,
    r: int,
    failed: tuple[int, ...] = (),
    secure: bool = False,
    checkpoint: bool = True,
    sign_head: bool = True,
) -> None:
    """Log round ``r`` of a federation over every enrolled client."""
    cohort = sorted(run.client_keys)
    with Ledger.open(run.ledger_path) as ledger:
        ledger.append(
            "round_start",
            {
                "round": r,
                "global_digest": state_digest(run.state),
                "cohort": cohort,
                "config": {"lr": 0.05, "local_steps": 2},
            },
        )
        deltas = []
        for c in cohort:
            if c in failed:
                ledger.append("failure", {"round": r, "client_id": c, "reason": "timed out"})
                continue
            delta = {
                k: 0.1 * torch.randn(v.shape, generator=run.generator) for k, v in run.state.items()
            }
            deltas.append(delta)
            if secure:
                continue
            digest = state_digest(delta)
            signature = sign(run.client_keys[c], update_message(run.run_id, r, c, digest))
            ledger.append(
                "update",
                {
                    "round": r,
                    "client_id": c,
                    "digest": digest,
                    "num_examples": 100 + c,
                    "signature": signature,
                },
            )
        total = {k: sum(d[k] for d in deltas) for k in run.state}
        run.state = {k: v + total[k] / len(deltas) for k, v in run.state.items()}
        ledger.append(
            "aggregate",
            {
                "round": r,
                "digest": state_digest(run.state),
                "secure": secure,
                "sum_digest": state_digest(total) if secure else None,
                "clients": [c for c in cohort if c not in failed],
            },
        )
        if checkpoint:
            save_checkpoint(run, ledger, r)
        if sign_head:
            run.anchors.append(ledger.sign_head(r, run.server_key).anchor)


def save_checkpoint(run: Run, ledger: Ledger, r: int) -> Path:
    """Write the checkpoint, log it, then rename it into place (the order the lead uses)."""
    final = run.run_dir / "checkpoints" / f"round_{r:04d}.ckpt"
    final.parent.mkdir(exist_ok=True)
    tmp = final.with_suffix(".tmp")
    torch.save({"round": r, "state": run.state}, tmp)
    ledger.append(
        "checkpoint",
        {"round": r, "file": f"checkpoints/{final.name}", "digest": file_digest(tmp)},
    )
    tmp.replace(final)
    return final


def build_run(run_dir: Path, rounds: int = 4, clients: int = 3, **kwargs: object) -> Run:
    run = start_run(run_dir, clients=clients, rounds=rounds)
    for r in range(rounds):
        log_round(run, r, **kwargs)  # type: ignore[arg-type]
    return run


def resume_from(run: Run, round: int, **extra: object) -> None:
    """Log a resume from round ``round``'s checkpoint (``extra``: more body fields) and
    take the run back to that checkpoint's state, as ``fedgen run --resume`` does."""
    name = f"checkpoints/round_{round:04d}.ckpt"
    body = {"from_round": round, "checkpoint": name, "head_size": run.anchors[round][0]}
    with Ledger.open(run.ledger_path) as ledger:
        ledger.append("resume", {**body, **extra})
    run.state = torch.load(run.run_dir / name)["state"]


def tamper(run: Run, *statements: str, params: tuple[object, ...] = ()) -> None:
    """Run SQL on the ledger as an attacker would: triggers dropped first."""
    conn = sqlite3.connect(run.ledger_path)
    triggers = [n for (n,) in conn.execute("SELECT name FROM sqlite_master WHERE type='trigger'")]
    for name in triggers:
        conn.execute(f"DROP TRIGGER {name}")
    for statement in statements:
        conn.execute(statement, params if "?" in statement else ())
    conn.commit()
    conn.close()


def rewrite_body(run: Run, seq: int, body: dict[str, object]) -> None:
    """Replace an entry's body and recompute its leaf hash, so only signed heads can tell."""
    conn = sqlite3.connect(run.ledger_path)
    kind, round = conn.execute("SELECT kind, round FROM entries WHERE seq = ?", (seq,)).fetchone()
    conn.close()
    text = json.dumps(body, sort_keys=True, separators=(",", ":"), ensure_ascii=True)
    new_hash = leaf_hash(leaf_data(kind, round, json.loads(text))).hex()
    tamper(
        run,
        "UPDATE entries SET body = ?, leaf_hash = ? WHERE seq = ?",
        params=(text, new_hash, seq),
    )


def seqs_of(run: Run, kind: str, round: int | None = None) -> list[int]:
    with Ledger.open(run.ledger_path, readonly=True) as ledger:
        return [e.seq for e in ledger.entries(round=round, kind=kind)]
