"""Would ``byte_gpt`` gain from the vectorized backend? vmap against a loop, on this CPU.

Issue 12 asks for a functional training step for every task whose networks allow it.
``byte_gpt`` (LayerNorm, no BatchNorm) allows it; before building one, this measures
what it could give: the gradient of C clients' next-byte losses computed once as
``vmap(grad(loss))`` over stacked parameters, against C ``loss.backward()`` calls on the
clients' own modules (what sequential training does), same weights, same batches, one
thread. Attention runs two ways under vmap: torch's ``scaled_dot_product_attention``
(which has no batching rule on CPU, so vmap loops over clients inside it) and the
explicit ``softmax(q k^T / sqrt(d)) v`` with a causal mask. Only the gradient is timed:
an optimizer step costs the same elementwise work on both paths.

    taskset -c 0 .venv/bin/python benchmarks/vmap_transformer.py [--clients 10 100]

Rows are appended to ``benchmarks/results/speed.md``; ``seq / vmap`` above 1 means the
vectorized gradient is faster.
"""

from __future__ import annotations

import argparse
import math
import time
import warnings
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch.func import functional_call, grad, stack_module_state, vmap

from fedgen.report.results_table import ResultsTable
from fedgen.tasks import byte_gpt
from fedgen.tasks.byte_gpt import ByteGpt, ByteGptParams

RESULTS = Path(__file__).resolve().parent / "results" / "speed.md"
COLUMNS = [
    "model",
    "clients",
    "attention",
    "vmap_s",
    "sequential_s",
    "seq / vmap",
    "max_grad_difference",
]


def explicit_attention(self: Any, x: torch.Tensor) -> torch.Tensor:
    """``CausalSelfAttention.forward`` with the attention written out (batchable by vmap)."""
    b, t, c = x.shape
    q, k, v = self.qkv(x).split(c, dim=2)
    q, k, v = (z.view(b, t, self.heads, c // self.heads).transpose(1, 2) for z in (q, k, v))
    att = (q @ k.transpose(-2, -1)) / math.sqrt(q.shape[-1])
    causal = torch.ones(t, t, dtype=torch.bool).tril()
    att = att.masked_fill(~causal, float("-inf")).softmax(-1)
    return self.proj((att @ v).transpose(1, 2).reshape(b, t, c))


def measure(params: ByteGptParams, clients: int, repeats: int) -> tuple[float, float, float]:
    """Median seconds of one gradient of every client: vmap, loop; their largest difference."""
    torch.manual_seed(0)
    models = [ByteGpt(256, params) for _ in range(clients)]
    stacked, _ = stack_module_state(models)
    base = models[0]
    x = torch.randint(0, 256, (clients, params.batch_size, params.block_size))
    y = torch.randint(0, 256, (clients, params.batch_size, params.block_size))

    def loss(p: dict[str, torch.Tensor], xi: torch.Tensor, yi: torch.Tensor) -> torch.Tensor:
        logits = functional_call(base, p, (xi,))
        # log_softmax + gather: cross_entropy's class-index range check does not vmap.
        return -logits.log_softmax(-1).gather(-1, yi.unsqueeze(-1)).mean()

    batched = vmap(grad(loss))

    def sequential() -> list[dict[str, torch.Tensor]]:
        out = []
        for i, m in enumerate(models):
            m.zero_grad()
            F.cross_entropy(m(x[i]).reshape(-1, 256), y[i].reshape(-1)).backward()
            out.append({k: p.grad for k, p in m.named_parameters()})
        return out

    got, want = batched(stacked, x, y), sequential()  # warm-up, and the check
    difference = max(
        float((got[k][i] - want[i][k]).abs().max()) for i in range(clients) for k in got
    )
    times: dict[str, list[float]] = {"vmap": [], "seq": []}
    for _ in range(repeats):  # alternated, so the machine's load falls on both
        t0 = time.perf_counter()
        batched(stacked, x, y)
        times["vmap"].append(time.perf_counter() - t0)
        t0 = time.perf_counter()
        sequential()
        times["seq"].append(time.perf_counter() - t0)
    median = {k: sorted(v)[len(v) // 2] for k, v in times.items()}
    return median["vmap"], median["seq"], difference


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--clients", type=int, nargs="+", default=[10, 100])
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--results", type=Path, default=RESULTS)
    args = parser.parse_args()
    torch.set_num_threads(1)
    warnings.filterwarnings("ignore", message=".*batching rule.*")
    # The recipe's network (configs/fortunes_byte_gpt.yaml): 2 layers, width 64, 64 bytes.
    params = ByteGptParams(block_size=64, layers=2, heads=4, width=64, batch_size=16)
    table = ResultsTable(args.results, COLUMNS)
    table.start(
        "byte_gpt gradients: vmap against a loop over clients",
        notes=[
            "ByteGpt of configs/fortunes_byte_gpt.yaml (2 layers, width 64, block 64, "
            "batch 16, 256-byte vocabulary); one thread; median of "
            f"{args.repeats} alternated repeats of every client's gradient",
        ],
    )
    sdpa = byte_gpt.CausalSelfAttention.forward
    for clients in args.clients:
        for attention in ("sdpa", "explicit"):
            byte_gpt.CausalSelfAttention.forward = (  # type: ignore[method-assign]
                sdpa if attention == "sdpa" else explicit_attention
            )
            vmap_s, seq_s, difference = measure(params, clients, args.repeats)
            table.append(
                {
                    "model": "byte_gpt",
                    "clients": clients,
                    "attention": attention,
                    "vmap_s": vmap_s,
                    "sequential_s": seq_s,
                    "seq / vmap": seq_s / vmap_s,
                    "max_grad_difference": difference,
                }
            )
    byte_gpt.CausalSelfAttention.forward = sdpa  # type: ignore[method-assign]


if __name__ == "__main__":
    main()
