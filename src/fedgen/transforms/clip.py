"""Per-update L2 norm clipping: the clipping half of DP-FedAvg (McMahan et al. 2018,
"Learning Differentially Private Recurrent Language Models"), with the adaptive bound
of Andrew et al. 2021 ("Differentially Private Learning with Adaptive Clipping").

Fixed: each client's update is scaled so its global L2 norm is at most ``max_norm``.

Adaptive: each client also sends one centred bit, ``1[norm <= C] - 1/2``, as an extra
update tensor (``UNCLIPPED_KEY``), so it travels through the same aggregation (and
secure aggregation) as the update. Centring halves the count's sensitivity to 1/2,
which is what Andrew et al.'s combined multiplier
``(z_update^-2 + (2 sigma_b)^-2)^-1/2`` assumes; an uncentred 0/1 bit would have
sensitivity 1 and leave epsilon understated. The server half reads the aggregated
count, adds Gaussian noise of standard deviation ``count_noise_stddev`` (sigma_b),
adds back the 1/2, and moves the bound geometrically toward the ``target_quantile``
of update norms:
``C <- C * exp(-clip_lr * (unclipped_fraction - target_quantile))``.
The count needs a known denominator (the expected cohort size), which the privacy
wiring supplies through ``bind`` (see ``fedgen.assembly.privacy``).
"""

from __future__ import annotations

import math
from typing import Any

import torch
from pydantic import BaseModel, ConfigDict, Field

from fedgen.errors import ClientUpdateError, ConfigError
from fedgen.registry import TRANSFORMS
from fedgen.transforms.base import TransformContext, UpdateTransform
from fedgen.types import StateDict

#: Side-channel tensors of transforms start with this prefix; they are not model tensors.
AUX_PREFIX = "__"
UNCLIPPED_KEY = "__clip__.unclipped"


def clipped_keys(update: StateDict) -> list[str]:
    """The tensors a norm bound covers: the float model tensors. Side channels are not
    the model's, and integer ones (a BatchNorm's step counter) are no gradient: counted,
    40 steps would outweigh every weight, and scaled, they would turn into floats."""
    return [k for k, t in update.items() if t.is_floating_point() and not k.startswith(AUX_PREFIX)]


def global_norm(update: StateDict) -> float:
    """L2 norm of the float model tensors of ``update`` taken as one vector."""
    parts = [update[k].double().pow(2).sum() for k in clipped_keys(update)]
    if not parts:
        return 0.0
    return float(torch.stack(parts).sum().sqrt())


@TRANSFORMS.register("clip")
class NormClip(UpdateTransform):
    """Scale each client's update so its global L2 norm is at most the bound ``C``.

    Args:
        max_norm: the bound C (adaptive: its initial value).
        target_quantile: if set, adapt C each round toward this quantile of the update
            norms (Andrew et al. 2021 use 0.5).
        clip_lr: the geometric step size eta_C of the adaptive update (paper: 0.2).
        count_noise_stddev: standard deviation of the noise on the count of unclipped
            clients (sigma_b). Default with client-level DP: expected clients / 20, as
            Andrew et al. recommend; without DP: 0.
    """

    class Params(BaseModel):
        """The recipe's ``params`` of a ``clip`` transform (see Args)."""

        model_config = ConfigDict(extra="forbid")

        max_norm: float = Field(gt=0, allow_inf_nan=False)
        target_quantile: float | None = Field(None, gt=0, lt=1)
        clip_lr: float = Field(0.2, gt=0, allow_inf_nan=False)
        count_noise_stddev: float | None = Field(None, ge=0, allow_inf_nan=False)

    def __init__(
        self,
        max_norm: float,
        target_quantile: float | None = None,
        clip_lr: float = 0.2,
        count_noise_stddev: float | None = None,
    ) -> None:
        from fedgen.privacy.accounting import as_number

        max_norm, target_quantile, clip_lr, count_noise_stddev = (
            as_number(max_norm),
            as_number(target_quantile),
            as_number(clip_lr),
            as_number(count_noise_stddev),
        )
        named = {
            "max_norm": max_norm,
            "target_quantile": target_quantile,
            "clip_lr": clip_lr,
            "count_noise_stddev": count_noise_stddev,
        }
        wrong = [f"clip {k}={v!r} must be a number" for k, v in named.items() if isinstance(v, str)]
        if wrong:
            raise ConfigError("; ".join(wrong))
        problems = []
        if not (max_norm > 0 and math.isfinite(max_norm)):
            problems.append(f"clip max_norm must be a finite number > 0, got {max_norm}")
        if target_quantile is not None and not 0 < target_quantile < 1:
            problems.append(
                f"clip target_quantile must be in (0, 1) (e.g. 0.5), got {target_quantile}"
            )
        if not clip_lr > 0:
            problems.append(f"clip clip_lr must be > 0 (e.g. 0.2), got {clip_lr}")
        if count_noise_stddev is not None and not count_noise_stddev >= 0:
            problems.append(f"clip count_noise_stddev must be >= 0, got {count_noise_stddev}")
        if problems:
            raise ConfigError("; ".join(problems))
        self.max_norm = float(max_norm)
        self.target_quantile = target_quantile
        self.clip_lr = float(clip_lr)
        self.count_noise_stddev = count_noise_stddev
        #: Expected clients per round: the fixed denominator the strategy divides by.
        self.expected_clients: float | None = None

    @property
    def adaptive(self) -> bool:
        return self.target_quantile is not None

    @property
    def auxiliary_keys(self) -> frozenset[str]:
        """Side-channel tensors each client adds to its update (checked by the server)."""
        return frozenset({UNCLIPPED_KEY}) if self.adaptive else frozenset()

    def bind(self, expected_clients: float, count_noise_stddev: float | None) -> None:
        """Fix the denominator of the aggregated count, and sigma_b if not given."""
        self.expected_clients = float(expected_clients)
        if self.count_noise_stddev is None:
            self.count_noise_stddev = count_noise_stddev

    def on_client(
        self, update: StateDict, ctx: TransformContext
    ) -> tuple[StateDict, dict[str, float]]:
        norm = global_norm(update)
        if not math.isfinite(norm):
            # min(1, C / nan) is 1: a NaN update would pass unclipped. The server rejects
            # it too, but the bound must not rest on that check.
            raise ClientUpdateError(
                f"update norm is {norm}: the client's training diverged (NaN or Inf); "
                "lower the learning rate or check the client's data"
            )
        scale = min(1.0, self.max_norm / (norm + 1e-12))
        if scale < 1.0:
            covered = set(clipped_keys(update))
            clipped = {k: v * scale if k in covered else v for k, v in update.items()}
        else:
            clipped = update
        if self.adaptive:
            clipped = dict(clipped)
            clipped[UNCLIPPED_KEY] = torch.tensor([float(norm <= self.max_norm) - 0.5])
        return clipped, {"update_norm": norm, "clipped": float(scale < 1.0)}

    def on_server(
        self, aggregate: StateDict, ctx: TransformContext
    ) -> tuple[StateDict, dict[str, float]]:
        if not self.adaptive:
            return aggregate, {}
        if self.expected_clients is None:
            raise ConfigError(
                "adaptive clipping needs a fixed-denominator mean: use strategy fedavg with "
                "weighted=false and fixed_denominator=true"
            )
        aggregate = dict(aggregate)
        mean_bit = aggregate.pop(UNCLIPPED_KEY, None)
        # The strategy divided the sum of bits by the expected cohort: undo it.
        count = 0.0 if mean_bit is None else float(mean_bit.sum()) * self.expected_clients
        sigma_b = self.count_noise_stddev or 0.0
        # The round's only client may have drawn it already (``sum_noise_std``).
        drawn = ctx.noised is not None and bool(ctx.noised.get(UNCLIPPED_KEY, False))
        if sigma_b > 0 and not drawn:
            gen = ctx.noise_generator("clip", "unclipped-count")
            count += sigma_b * float(torch.randn((), generator=gen, dtype=torch.float64))
        unclipped = count / self.expected_clients + 0.5  # undo the clients' centring
        assert self.target_quantile is not None
        used = self.max_norm
        self.max_norm = used * math.exp(-self.clip_lr * (unclipped - self.target_quantile))
        return aggregate, {
            "clip_norm": used,
            "next_clip_norm": self.max_norm,
            "unclipped_fraction": unclipped,
        }

    def sum_noise_std(self, key: str, value: torch.Tensor) -> float:
        """sigma_b on the count of unclipped clients (adaptive clipping), else none."""
        if key == UNCLIPPED_KEY and self.adaptive:
            return float(self.count_noise_stddev or 0.0)
        return 0.0

    def state_dict(self) -> dict[str, Any]:
        return {"max_norm": self.max_norm} if self.adaptive else {}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        if "max_norm" in state:
            self.max_norm = float(state["max_norm"])
