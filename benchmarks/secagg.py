"""Secure-aggregation benchmark: bytes and seconds of SecAgg / SecAgg+ against plain aggregation.

For n in {10, 50, 100} clients, 0/10/30% dropouts after key sharing, full SecAgg
(Bonawitz et al. 2017) and SecAgg+ (Bell et al. 2020, neighbours ~ 2 log2 n), one
round over a real model vector (the federated state of a small conditional GAN,
~92k float32 parameters). Plain aggregation sends float32 vectors of the same
size (+ the weight) and the server adds them. One row is appended to
``benchmarks/results/secagg.md`` as soon as it is measured.

    .venv/bin/python benchmarks/secagg.py [--clients 10 50 100] [--out benchmarks/results/secagg.md]

Anchor (Bonawitz et al. 2017, abstract): "For 16-bit input values, our protocol
offers 1.73x communication expansion for 2^10 users and 2^20-dimensional
vectors, and 1.98x expansion for 2^14 users and 2^24-dimensional vectors over
sending data in the clear."
"""

from __future__ import annotations

import argparse
import math
import time
from pathlib import Path

import torch

from fedgen.report.results_table import ResultsTable
from fedgen.tasks.gan import ConditionalGan, GanParams
from fedgen.transforms.secagg import (
    SecAggConfig,
    SecAggRoundFailedError,
    secure_aggregate,
    simulate_dropouts,
)

COLUMNS = [
    "clients",
    "dropout",
    "protocol",
    "k (neighbours)",
    "t (threshold)",
    "survivors",
    "bytes up / client",
    "bytes down / client",
    "plain bytes up / client",
    "expansion up",
    "expansion up+down",
    "client s / client",
    "server s",
    "plain server s",
    "error bound",
]
ANCHOR = (
    "Bonawitz et al. 2017 (abstract): 1.73x communication expansion for 2^10 users and "
    "2^20-dimensional vectors of 16-bit inputs; 1.98x for 2^14 users and 2^24 dimensions, "
    "over sending data in the clear."
)


def model_updates(n: int, seed: int) -> dict[int, dict[str, torch.Tensor]]:
    """n updates shaped like the cGAN's federated state (~92k floats)."""
    task = ConditionalGan(GanParams(generator_width=8, discriminator_width=16), 10, (1, 28, 28), 0)
    state = task.federated_state()
    gen = torch.Generator().manual_seed(seed)
    return {
        c: {k: 0.01 * torch.randn(v.shape, generator=gen) for k, v in state.items()}
        for c in range(n)
    }


def plain_round(updates: dict[int, dict[str, torch.Tensor]], survivors: tuple[int, ...]) -> float:
    """Server seconds to sum the survivors' float32 updates in the clear."""
    t0 = time.perf_counter()
    total = {k: torch.zeros_like(v) for k, v in updates[survivors[0]].items()}
    for c in survivors:
        for k, v in updates[c].items():
            total[k] += v
    return time.perf_counter() - t0


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--clients", type=int, nargs="+", default=[10, 50, 100])
    parser.add_argument("--dropouts", type=float, nargs="+", default=[0.0, 0.1, 0.3])
    parser.add_argument("--paper-setting", type=int, nargs="*", default=[100])
    parser.add_argument("--out", type=Path, default=Path("benchmarks/results/secagg.md"))
    args = parser.parse_args(argv)
    torch.set_num_threads(1)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    numel = sum(v.numel() for v in model_updates(1, 0)[0].values())
    runs = []
    for n in args.clients:
        k_plus = 2 * math.ceil(math.log2(n))
        for rate in args.dropouts:
            runs.append((n, rate, "SecAgg", SecAggConfig(clip=1.0), 4))
            plus = SecAggConfig(clip=1.0, neighbours=k_plus, threshold=0.5)
            runs.append((n, rate, "SecAgg+", plus, 4))
    for n in args.paper_setting:
        # 16-bit inputs: the sum of n needs 16 + ceil(log2 n) bits (+1 for no wrap).
        bits = 16 + math.ceil(math.log2(n)) + 1
        paper = SecAggConfig(clip=1.0, value_bits=16, modulus_bits=bits)
        runs.append((n, 0.0, f"SecAgg 16-bit in Z_(2^{bits})", paper, 2))
    table = ResultsTable(args.out, COLUMNS)
    table.start(
        "secagg",
        notes=[
            f"model vector: {numel} float32 parameters (cGAN, generator_width 8, "
            "discriminator_width 16) + 1 weight coordinate; modulus 2^32 (4-byte words), "
            "stochastic rounding, clip 1.0",
            "full SecAgg: threshold 2/3 of all clients; SecAgg+: Harary graph with "
            "k = 2*ceil(log2 n) neighbours (even), threshold 1/2 of the k+1 share holders "
            "(a strict majority)",
            "bytes: compact binary messages (4-byte ids/round, 32-byte keys, AES-GCM "
            "ciphertexts with nonce and tag, 33-byte Shamir shares); plain = one float32 "
            "vector up per client. Model download (same for both) not counted.",
            "per-client bytes are totals over the round divided by the n sampled clients; "
            "dropouts send no masked vector, and in plain aggregation they send nothing, so "
            "plain bytes up / client = survivors x one vector / n",
            "expansion up = secagg bytes up / plain bytes up; expansion up+down = secagg "
            "(up + down) / plain up (down: keys, routed ciphertexts, unmask requests)",
            "the last rows use the paper's input size: 16-bit values (value_bits 16) in "
            "Z_(2^(17 + ceil(log2 n))) (4-byte words on the wire: no bit packing) against "
            "plain 16-bit values (2 bytes per coordinate)",
            "error bound: fixed-point bound on each coordinate of the sum (computed, "
            "survivors x 1 level x clip)",
            "seconds: one process, all clients run one after the other; client s is the "
            "mean per client over all phases, server s the server's total",
            f"anchor: {ANCHOR}",
        ],
    )
    cache: dict[int, dict[int, dict[str, torch.Tensor]]] = {}
    for n, rate, protocol, config, plain_word in runs:
        updates = cache.setdefault(n, model_updates(n, seed=n))
        weights = dict.fromkeys(updates, 1.0)
        drop = simulate_dropouts(updates, rate, seed=0, round=n)
        plan = config.plan(n)
        head = [n, f"{rate:.0%}", protocol, plan.neighbours or n - 1, plan.threshold]
        try:
            out = secure_aggregate(
                updates, weights, config=config, seed=0, round=n, drop_after_sharing=drop
            )
        except SecAggRoundFailedError as exc:
            row = [*head, f"round fails: {exc}"]
        else:
            # Plain: every survivor sends its vector and weight in the clear (+ id, round).
            plain_up = len(out.survivors) * ((numel + 1) * plain_word + 8) / n
            up = sum(out.bytes_up.values()) / n
            down = sum(out.bytes_down.values()) / n
            row = [
                *head,
                len(out.survivors),
                f"{up:,.0f}",
                f"{down:,.0f}",
                f"{plain_up:,.0f}",
                f"{up / plain_up:.3f}",
                f"{(up + down) / plain_up:.3f}",
                f"{sum(out.client_seconds.values()) / n:.3f}",
                f"{sum(out.server_seconds.values()):.3f}",
                f"{plain_round(updates, out.survivors):.4f}",
                f"{out.max_abs_error:.2e}",
            ]
        print(table.append(dict(zip(COLUMNS, row, strict=False))), flush=True)


if __name__ == "__main__":
    main()
