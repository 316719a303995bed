"""How low-rank a federation's aggregated update is: the share of one round's update kept
by each matrix's best rank-r approximation (what a ``lowrank`` codec of rank r can send
in one round; the error feedback carries the rest later).

The update is the global state of round ``--round`` minus that of the round before, read
from a run folder's checkpoints (``checkpoints/round_NNNN.ckpt``; a run keeps its last
two). Tensors of two or more dimensions are flattened to ``(out, -1)`` matrices; those
with a side of 8 or less are left out (rank 8 would keep them exactly), as are vectors.

    .venv/bin/python benchmarks/update_rank.py RUN [RUN ...] --round 59
"""

from __future__ import annotations

import argparse
from pathlib import Path

import torch

from fedgen.engine.checkpoint import load_checkpoint

RANKS = (1, 2, 4, 6, 8)


def round_update(run: Path, round_index: int) -> dict[str, torch.Tensor]:
    """The global state's change over round ``round_index`` of ``run``."""

    def state(r: int) -> dict[str, torch.Tensor]:
        path = run / "checkpoints" / f"round_{r:04d}.ckpt"
        if not path.exists():
            raise SystemExit(
                f"{path} is missing: pass a --round whose checkpoint and the one before exist"
            )
        return load_checkpoint(path)["federation"]["global_state"]

    before, after = state(round_index - 1), state(round_index)
    return {
        k: after[k].float() - before[k].float() for k in before if before[k].is_floating_point()
    }


def rank_shares(update: dict[str, torch.Tensor]) -> tuple[float, dict[int, float]]:
    """(the matrices' share of the update's energy, the share of that kept at each rank)."""
    total = sum(float((v**2).sum()) for v in update.values())
    matrices = [v.reshape(v.shape[0], -1) for v in update.values() if v.dim() >= 2]
    matrices = [m for m in matrices if min(m.shape) > 8]
    energy = sum(float((m**2).sum()) for m in matrices)
    kept = dict.fromkeys(RANKS, 0.0)
    for m in matrices:
        squares = torch.linalg.svdvals(m) ** 2
        for r in RANKS:
            kept[r] += float(squares[:r].sum())
    return energy / total, {r: kept[r] / energy for r in RANKS}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("runs", nargs="+", type=Path)
    parser.add_argument("--round", type=int, default=59, dest="round_index")
    args = parser.parse_args()
    print("| run | round | matrices' share | " + " | ".join(f"kept at r={r}" for r in RANKS) + " |")
    print("|---|---|---|" + "---|" * len(RANKS))
    for run in args.runs:
        share, kept = rank_shares(round_update(run, args.round_index))
        cells = " | ".join(f"{kept[r]:.2f}" for r in RANKS)
        print(f"| {run} | {args.round_index} | {share:.2f} | {cells} |")


if __name__ == "__main__":
    main()
