"""Helpers shared by the secure-aggregation tests (a module, not a conftest: names stay unique)."""

import torch

from fedgen.types import StateDict


def make_updates(n: int, size: int, seed: int, scale: float = 0.1) -> dict[int, StateDict]:
    """Small real-valued updates of two tensors per client."""
    gen = torch.Generator().manual_seed(seed)
    return {
        cid: {
            "w": torch.randn(size, generator=gen) * scale,
            "b": torch.randn(2, 3, generator=gen) * scale,
        }
        for cid in range(n)
    }


def plain_weighted_sum(
    updates: dict[int, StateDict], weights: dict[int, float], ids
) -> dict[str, torch.Tensor]:
    """The obvious reference: sum of weight * update in float64."""
    names = list(next(iter(updates.values())))
    return {k: sum(weights[i] * updates[i][k].double() for i in ids) for k in names}


def max_abs_diff(a: StateDict, b: StateDict) -> float:
    return max(float((a[k] - b[k]).abs().max()) for k in a)
