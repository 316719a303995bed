"""Soak benchmark: a long federation with crashing clients and a server killed again and again.

A small real federation (a narrow cGAN on the MNIST digits, ``--clients`` clients,
``--rounds`` rounds) runs through the real ``fedgen`` command twice:

- the reference: clients crash at ``--crash`` (half before training, half after,
  drawn from each client's round seed), the server runs uninterrupted;
- the soak: the same recipe, but the server process is SIGKILLed ``--kills`` times
  at random points and resumed each time with ``fedgen run --resume`` (or started
  afresh when it died before its first checkpoint).

The soak must end bit-identical to the reference (global state, strategy state,
every metrics line but timings), lose no round from ``metrics.jsonl`` and no
round from the ledger, and its ledger must verify. With ``--backend process_pool``
it also counts worker processes still alive 5 s after each kill. One row per
setting is appended to ``benchmarks/results/faults.md``.

    .venv/bin/python benchmarks/faults.py [--rounds 200] [--crash 0.3] [--kills 5]
"""

from __future__ import annotations

import argparse
import json
import os
import random
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import torch

from fedgen.engine.checkpoint import list_checkpoints, load_checkpoint
from fedgen.engine.ledger_callback import checkpoint_anchors
from fedgen.ledger import LEDGER_FILE, Ledger, verify_run
from fedgen.report.results_table import ResultsTable, current_commit

ROOT = Path(__file__).resolve().parents[1]
COLUMNS = [
    "commit",
    "backend",
    "rounds",
    "clients",
    "crash rate",
    "client failures",
    "server kills",
    "resumes",
    "fresh restarts",
    "rounds lost",
    "ledger rounds lost",
    "ledger verifies",
    "bit-identical",
    "orphaned workers",
    "reference s",
    "soak s",
    "verify s / 1,000 rounds",
]


def recipe(args: argparse.Namespace) -> list[str]:
    """``--set`` items of the soak's recipe."""
    half = args.crash / 2
    items = [
        "data.sources=[mnist]",
        f"data.num_clients={args.clients}",
        "data.partition.kind=iid",
        "data.partition.params={}",
        "task.params={batch_size: 16, generator_width: 8, discriminator_width: 8}",
        f"federation.rounds={args.rounds}",
        "federation.local_steps=2",
        "strategy.params={fraction: 0.5, min_clients: 1}",
        f"faults={{crash_before: {half}, crash_after: {half}}}",
        "eval.every=0",
        "eval.final=false",
        "checkpoint.every=1",
        "checkpoint.keep=2",
        "threads=1",
        f"seed={args.seed}",
        f"backend.name={args.backend}",
    ]
    if args.backend == "process_pool":
        items.append("backend.params={workers: 1}")
    return [x for item in items for x in ("--set", item)]


def fedgen(*args: str) -> subprocess.Popen[str]:
    """Start ``fedgen ARGS`` as its own process group (so a kill reaches only it)."""
    env = {**os.environ, "OMP_WAIT_POLICY": "PASSIVE"}
    return subprocess.Popen(
        [sys.executable, "-m", "fedgen.cli", *args],
        cwd=ROOT,
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        text=True,
    )


def children_of(pid: int) -> list[int]:
    """Pids of the live processes whose parent is ``pid`` (the server's workers)."""
    found = []
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit() and alive(int(entry.name)):
            try:
                ppid = int((entry / "stat").read_text().rsplit(")", 1)[1].split()[1])
            except (OSError, ValueError, IndexError):
                continue
            if ppid == pid:
                found.append(int(entry.name))
    return found


def alive(pid: int) -> bool:
    """Whether ``pid`` is a live process (a zombie does no work: not alive)."""
    try:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0] != "Z"
    except (OSError, IndexError):
        return False


def run_to_end(out: Path, args: argparse.Namespace) -> float:
    """The reference: one uninterrupted run; returns its seconds."""
    t0 = time.perf_counter()
    proc = fedgen("run", "--no-progress", "--out", str(out), *recipe(args))
    _, err = proc.communicate()
    if proc.returncode != 0:
        raise SystemExit(f"reference run failed:\n{err}")
    return time.perf_counter() - t0


def soak(out: Path, args: argparse.Namespace, reference_s: float) -> dict[str, Any]:
    """The killed-and-resumed run; returns its counts."""
    rng = random.Random(args.seed)
    round_s = reference_s / args.rounds
    kills = resumes = fresh = orphans = 0
    t0 = time.perf_counter()
    while True:
        resume = bool(list_checkpoints(out / "checkpoints"))
        if resume:
            proc = fedgen("run", "--no-progress", "--resume", str(out), *recipe(args))
            resumes += 1
        else:
            proc = fedgen("run", "--no-progress", "--out", str(out), *recipe(args))
            fresh += kills > 0
        if kills < args.kills:
            # After a random number of further rounds, at a random moment inside the
            # next one: mid-training, mid-ledger-append or mid-checkpoint alike.
            target = rounds_done(out) + rng.randint(1, max(1, 2 * args.rounds // (args.kills + 1)))
            target = min(target, args.rounds - 1)
            while proc.poll() is None and rounds_done(out) < target:
                time.sleep(0.05)
            time.sleep(rng.uniform(0.0, round_s))
            if proc.poll() is None:
                workers = children_of(proc.pid)
                proc.send_signal(signal.SIGKILL)
                proc.wait()
                kills += 1
                if args.backend == "process_pool":
                    time.sleep(5.0)
                    orphans += sum(alive(p) for p in workers)
                print(f"kill {kills} in round {rounds_done(out)}", file=sys.stderr, flush=True)
                continue
        _, err = proc.communicate()
        if proc.returncode != 0:
            raise SystemExit(f"soak run failed:\n{err}")
        break
    return {
        "server kills": kills,
        "resumes": resumes,
        "fresh restarts": fresh,
        "orphaned workers": orphans if args.backend == "process_pool" else None,
        "soak s": time.perf_counter() - t0,
    }


def rounds_done(run_dir: Path) -> int:
    """Rounds whose metrics line is written (the file may end in a cut line)."""
    try:
        return (run_dir / "metrics.jsonl").read_text().count("\n")
    except OSError:
        return 0


def final(run_dir: Path) -> dict[str, Any]:
    """The newest checkpoint's federation state, without what differs by design.

    Per-run secrets (the DP noise key, the ledger's keys) are drawn afresh by every
    run that starts from scratch, and timings differ on any machine.
    """
    _, path = list_checkpoints(run_dir / "checkpoints")[-1]
    state: dict[str, Any] = load_checkpoint(path)["federation"]
    state.pop("noise_key", None)
    state.pop("audit", None)
    state["history"] = [
        {k: v for k, v in m.items() if not k.endswith("seconds")} for m in state["history"]
    ]
    return state


def same(a: Any, b: Any) -> bool:
    """Bit-for-bit equality of nested checkpoint values."""
    if isinstance(a, torch.Tensor) and isinstance(b, torch.Tensor):
        return a.dtype == b.dtype and a.shape == b.shape and torch.equal(a, b)
    if isinstance(a, dict) and isinstance(b, dict):
        return a.keys() == b.keys() and all(same(a[k], b[k]) for k in a)
    if isinstance(a, list | tuple) and isinstance(b, list | tuple):
        return len(a) == len(b) and all(same(x, y) for x, y in zip(a, b, strict=True))
    return bool(a == b)


def metrics_lines(run_dir: Path) -> list[dict[str, Any]]:
    lines = [json.loads(x) for x in (run_dir / "metrics.jsonl").read_text().splitlines()]
    return [{k: v for k, v in m.items() if not k.endswith("seconds")} for m in lines]


def ledger_rounds(run_dir: Path) -> set[int]:
    """Rounds the ledger closed: an aggregate, or a failure of the whole round."""
    with Ledger.open(run_dir / LEDGER_FILE, readonly=True) as ledger:
        closed = {e.round for e in ledger.entries(kind="aggregate")}
        closed |= {e.round for e in ledger.entries(kind="failure") if e.body["client_id"] is None}
    return {r for r in closed if r is not None}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--rounds", type=int, default=200)
    parser.add_argument("--clients", type=int, default=10)
    parser.add_argument("--crash", type=float, default=0.3)
    parser.add_argument("--kills", type=int, default=5)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--backend", default="inprocess", choices=["inprocess", "process_pool"])
    parser.add_argument("--work", type=Path, default=ROOT / "benchmarks/runs/faults")
    parser.add_argument("--out", type=Path, default=ROOT / "benchmarks/results/faults.md")
    args = parser.parse_args()

    table = ResultsTable(args.out, COLUMNS)
    table.start(
        f"Soak: {args.rounds} rounds, {args.crash:.0%} client crashes, {args.kills} server kills",
        notes=[
            "reference = the same recipe and crashes without server kills; the soak is "
            "SIGKILLed at random points and resumed (`fedgen run --resume`) each time",
            "bit-identical: final global state, strategy state and every metrics line but "
            "timings; rounds lost: missing from metrics.jsonl; ledger rounds lost: rounds "
            "with neither an aggregate nor a round failure in ledger.sqlite",
        ],
    )
    stamp = time.strftime("%Y%m%d-%H%M%S")
    ref, run = args.work / f"{stamp}-ref", args.work / f"{stamp}-soak"
    reference_s = run_to_end(ref, args)
    counts = soak(run, args, reference_s)

    want, got = metrics_lines(ref), metrics_lines(run)
    rounds = range(args.rounds)
    anchors, unreadable = checkpoint_anchors(run / "checkpoints")
    t0 = time.perf_counter()
    report = verify_run(run, anchors=anchors)
    verify_s = time.perf_counter() - t0
    identical = same(final(ref), final(run)) and want == got
    row = {
        "commit": current_commit(),
        "backend": args.backend,
        "rounds": args.rounds,
        "clients": args.clients,
        "crash rate": args.crash,
        "client failures": sum(m.get("failures", 0) for m in got),
        **counts,
        "rounds lost": len(set(rounds) - {m["round"] for m in got}),
        "ledger rounds lost": len(set(rounds) - ledger_rounds(run)),
        "ledger verifies": "yes" if report.ok and not unreadable else "NO",
        "bit-identical": "yes" if identical else "NO",
        "reference s": reference_s,
        "verify s / 1,000 rounds": verify_s * 1000 / args.rounds,
    }
    print(table.append(row))
    for line in report.problems + unreadable:
        print(f"ledger problem: {line}", file=sys.stderr)


if __name__ == "__main__":
    main()
