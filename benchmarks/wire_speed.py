"""Speed of the wire: encoded messages against pickle, and rounds per second on the pool.

Two measurements, side by side in one run:

- One client's job and reply for the default cGAN (the recipe's default task on
  28x28 one-channel images, 10 classes): ``fedgen.wire`` encode + decode of the job
  (global state, instruction) and of the reply (an update of the same shapes,
  metrics, a signature), against ``pickle.dumps`` + ``pickle.loads`` of the same
  objects (the tuple the process pool sent before, and a ``ClientResult``). Each is
  timed ``--number`` times per repeat, ``--repeat`` repeats; the median per call is
  reported. Pickle here copies tensors by value, as a byte stream must; the pool
  used to hand tensors over through shared memory instead, so this row is the
  bytes-on-a-wire baseline, not what the old pool paid per job.
- Rounds per second of the tiny federation (``tests/tiny_federation.py``: 4 MNIST
  clients, widths 8, 2 local steps) on ``process_pool`` with 2 workers and on
  ``inprocess``, after one warm-up round (worker start-up), each in a fresh process;
  with ``--baseline-src DIR`` also the pool on the fedgen source in ``DIR``
  (e.g. ``git archive <commit> src | tar -x -C DIR``).

Rows are appended to ``benchmarks/results/wire.md``.

    taskset -c 0 .venv/bin/python benchmarks/wire_speed.py [--baseline-src /tmp/base]
"""

from __future__ import annotations

import argparse
import json
import os
import pickle
import statistics
import subprocess
import sys
import time
import timeit
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
COLUMNS = [
    "measurement",
    "code",
    "bytes",
    "encode µs",
    "decode µs",
    "encode + decode µs",
    "rounds / s",
    "rounds / s, all trials",
]


def time_per_call(fn: Any, number: int, repeat: int) -> float:
    """Median seconds per call of ``fn`` over ``repeat`` runs of ``number`` calls."""
    return statistics.median(t / number for t in timeit.Timer(fn).repeat(repeat, number))


def message_rows(number: int, repeat: int) -> list[dict[str, Any]]:
    """Wire vs pickle for a job and a reply of the default cGAN."""
    import torch

    from fedgen.config import ExperimentConfig
    from fedgen.engine.backends.base import LocalWork
    from fedgen.engine.backends.local_training import job_message, reply_message
    from fedgen.experiment import build_task
    from fedgen.modality import DataSpec, Modality
    from fedgen.types import ClientInstruction, ClientResult
    from fedgen.wire import decode, encode

    cfg = ExperimentConfig()
    task = build_task(cfg, DataSpec(Modality.IMAGES, num_classes=10, image_shape=(1, 28, 28)))
    state = task.federated_state()
    gen = torch.Generator().manual_seed(0)
    ins = ClientInstruction(3, 1234567890123, {})
    work = LocalWork(task, state, [], 2, None, 5, os.urandom(32))
    result = ClientResult(
        3,
        2500,
        update={k: torch.randn(v.shape, generator=gen).to(v.dtype) for k, v in state.items()},
        metrics={"loss/discriminator": 1.3, "loss/generator": 0.7, "steps": 2.0},
        signature="ab" * 64,
    )
    # What the pool pickled before: the job tuple of process_pool._job, the reply tuple.
    pickled = {
        "job": (ins, state, [], 2, None, 5, None, 4, work.noise_key, None, None),
        "reply": ("ok", result, {}),
    }
    messages = {"job": job_message(ins, work, 4), "reply": reply_message(result)}
    rows = []
    for name in ("job", "reply"):
        data = encode(messages[name])
        blob = pickle.dumps(pickled[name], protocol=pickle.HIGHEST_PROTOCOL)
        timings = {
            "wire": (
                time_per_call(lambda m=messages[name]: encode(m), number, repeat),
                time_per_call(lambda d=data: decode(d), number, repeat),
                len(data),
            ),
            "pickle": (
                time_per_call(
                    lambda o=pickled[name]: pickle.dumps(o, protocol=pickle.HIGHEST_PROTOCOL),
                    number,
                    repeat,
                ),
                time_per_call(lambda b=blob: pickle.loads(b), number, repeat),
                len(blob),
            ),
        }
        for code, (enc, dec, size) in timings.items():
            rows.append(
                {
                    "measurement": f"default cGAN {name}",
                    "code": code,
                    "bytes": size,
                    "encode µs": enc * 1e6,
                    "decode µs": dec * 1e6,
                    "encode + decode µs": (enc + dec) * 1e6,
                }
            )
    return rows


def rounds_per_second(backend: str, rounds: int, data_dir: str) -> float:
    """Rounds per second of the tiny federation on ``backend`` (after a warm-up round)."""
    sys.path.insert(0, str(ROOT / "tests"))
    from tiny_federation import tiny_config  # type: ignore[import-not-found]

    from fedgen.experiment import build_experiment

    params = "{workers: 2}" if backend == "process_pool" else "{}"
    cfg = tiny_config(
        Path(data_dir), threads=1, **{"backend.name": backend, "backend.params": params}
    )
    fed = build_experiment(cfg).federation
    try:
        fed.run_round(0)  # starts the workers
        t0 = time.perf_counter()
        for r in range(1, rounds + 1):
            fed.run_round(r)
        return rounds / (time.perf_counter() - t0)
    finally:
        fed.backend.close()


def measure_rounds(backend: str, rounds: int, data_dir: str, src: Path | None) -> float:
    """``rounds_per_second`` in a fresh process, on this checkout's source or on ``src``."""
    env = dict(os.environ)
    env["PYTHONPATH"] = str((src or ROOT) / "src")
    command = [sys.executable, __file__, "--rounds-only", backend, "--rounds", str(rounds)]
    out = subprocess.run(
        [*command, "--data-dir", data_dir],
        env=env,
        capture_output=True,
        text=True,
        check=True,
    )
    return float(json.loads(out.stdout.strip().splitlines()[-1])["rounds_per_s"])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--number", type=int, default=200, help="calls per timing repeat")
    parser.add_argument("--repeat", type=int, default=7, help="timing repeats (median kept)")
    parser.add_argument("--rounds", type=int, default=10, help="timed federation rounds")
    parser.add_argument(
        "--trials", type=int, default=5, help="federation timings per setting (interleaved)"
    )
    parser.add_argument(
        "--data-dir",
        default=os.environ.get("FEDGEN_DATA_DIR") or str(ROOT.parent / "shared" / "data"),
    )
    parser.add_argument("--baseline-src", type=Path, help="fedgen source tree to compare with")
    parser.add_argument("--baseline-label", default="baseline", help="its name in the table")
    parser.add_argument(
        "--out", type=Path, default=ROOT / "benchmarks" / "results" / "wire.md", help="table file"
    )
    parser.add_argument("--rounds-only", metavar="BACKEND", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.rounds_only:
        rate = rounds_per_second(args.rounds_only, args.rounds, args.data_dir)
        print(json.dumps({"rounds_per_s": rate}))
        return

    from fedgen.report.results_table import ResultsTable, current_commit

    table = ResultsTable(args.out, COLUMNS)
    table.start(
        "Wire messages against pickle; tiny federation rounds per second",
        notes=[
            f"messages: median of {args.repeat} repeats x {args.number} calls; default cGAN "
            "(task defaults, 1x28x28, 10 classes); pickle copies tensors by value (the old "
            "pool passed them through shared memory instead)",
            f"rounds / s: tiny federation (4 MNIST clients, widths 8, 2 local steps), "
            f"{args.rounds} rounds after a warm-up round, threads 1, a fresh process each; "
            f"median of {args.trials} trials, the settings interleaved; this process and its "
            f"workers may run on {len(os.sched_getaffinity(0))} core(s)",
        ],
    )
    for row in message_rows(args.number, args.repeat):
        print(table.append(row), flush=True)
    runs = [("process_pool", current_commit(), None), ("inprocess", current_commit(), None)]
    if args.baseline_src is not None:
        runs.insert(1, ("process_pool", args.baseline_label, args.baseline_src))
    rates: list[list[float]] = [[] for _ in runs]
    for _ in range(args.trials):
        for i, (backend, _label, src) in enumerate(runs):
            rates[i].append(measure_rounds(backend, args.rounds, args.data_dir, src))
    for (backend, label, _src), trials in zip(runs, rates, strict=True):
        row = {
            "measurement": f"tiny federation, {backend}",
            "code": label,
            "rounds / s": statistics.median(trials),
            "rounds / s, all trials": " ".join(f"{r:.2f}" for r in trials),
        }
        print(table.append(row), flush=True)


if __name__ == "__main__":
    main()
