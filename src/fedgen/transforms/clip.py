"""Per-update L2 norm clipping (the clipping half of DP-FedAvg, McMahan et al. 2018)."""

from __future__ import annotations

import torch

from fedgen.errors import ConfigError
from fedgen.registry import TRANSFORMS
from fedgen.transforms.base import TransformContext, UpdateTransform
from fedgen.types import StateDict


def global_norm(update: StateDict) -> float:
    """L2 norm of all tensors of ``update`` taken as one vector."""
    if not update:
        return 0.0
    return float(torch.stack([t.double().pow(2).sum() for t in update.values()]).sum().sqrt())


@TRANSFORMS.register("clip")
class NormClip(UpdateTransform):
    """Scale each client's update so its global L2 norm is at most ``max_norm``."""

    def __init__(self, max_norm: float) -> None:
        if not max_norm > 0:
            raise ConfigError(f"clip max_norm must be > 0, got {max_norm}")
        self.max_norm = float(max_norm)

    def on_client(
        self, update: StateDict, ctx: TransformContext
    ) -> tuple[StateDict, dict[str, float]]:
        norm = global_norm(update)
        scale = min(1.0, self.max_norm / (norm + 1e-12))
        clipped = {k: v * scale for k, v in update.items()} if scale < 1.0 else update
        return clipped, {"update_norm": norm, "clipped": float(scale < 1.0)}
