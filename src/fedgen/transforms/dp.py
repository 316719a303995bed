"""Gaussian noise on the aggregate: the noising half of client-level DP-FedAvg
(McMahan et al. 2018, "Learning Differentially Private Recurrent Language Models").

Each client's update is clipped to norm C by a ``NormClip`` earlier in the pipeline;
the strategy sums the clipped updates and divides by a fixed denominator, the
expected cohort size m = q * N (FedAvg with ``weighted=false``,
``fixed_denominator=true``, ``sampling=poisson``). One client then changes the
aggregate by at most C / m, so the server half adds N(0, (z * C / m)^2) to every
coordinate once per round. With adaptive clipping (Andrew et al. 2021, "Differentially
Private Learning with Adaptive Clipping") the count of unclipped clients is released
too; the two releases together are one Gaussian mechanism with multiplier
z = (z_update^-2 + (2 sigma_b)^-2)^-1/2, so given z (or the z calibrated from a target
epsilon), the update noise is z_update = (z^-2 - (2 sigma_b)^-2)^-1/2.

The noise is drawn from a generator keyed by the run's secret noise key
(``fedgen.privacy.noise_key``): nobody holding the run's config can regenerate it, and a
resumed run (the key is in its checkpoint) stays bit-identical.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import torch
from pydantic import BaseModel, ConfigDict

from fedgen.privacy.accounting import (
    as_number,
    budget_problems,
    calibrate_noise,
    compute_epsilon,
)
from fedgen.privacy.errors import PrivacyConfigError
from fedgen.registry import TRANSFORMS
from fedgen.transforms.base import TransformContext, UpdateTransform
from fedgen.transforms.clip import AUX_PREFIX, NormClip
from fedgen.types import StateDict


@TRANSFORMS.register("client_dp")
class ClientLevelDP(UpdateTransform):
    """Server-side Gaussian noise for client-level (epsilon, delta)-DP.

    Give ``noise_multiplier`` (z), or ``epsilon`` to have z calibrated for the planned
    rounds, or both (z is used and the run stops before epsilon would be exceeded).

    Args:
        noise_multiplier: z, the accounted noise standard deviation in units of the clip
            bound (with adaptive clipping's count noise, the update noise is drawn with
            the larger ``update_noise_multiplier``, so that the two together give z).
        epsilon: the target (budget) epsilon for the whole run.
        delta: the delta of the guarantee (keep it well below 1 / number of clients).
        accountant: ``"rdp"`` or ``"prv"`` (Opacus's accountants).
    """

    class Params(BaseModel):
        """The recipe's ``params`` of a ``client_dp`` transform (see Args).

        Types only: the ranges (epsilon > 0, delta in (0, 1), a known accountant) are
        the privacy layer's ``budget_problems``, whose messages say how to fix each.
        """

        model_config = ConfigDict(extra="forbid")

        noise_multiplier: float | None = None
        epsilon: float | None = None
        delta: float = 1e-5
        accountant: str = "rdp"

    def __init__(
        self,
        noise_multiplier: float | None = None,
        epsilon: float | None = None,
        delta: float = 1e-5,
        accountant: str = "rdp",
    ) -> None:
        noise_multiplier, epsilon, delta = (
            as_number(noise_multiplier),
            as_number(epsilon),
            as_number(delta),
        )
        problems = budget_problems(
            epsilon=epsilon,
            delta=delta,
            noise_multiplier=noise_multiplier,
            accountant=accountant,
            where="client_dp ",
        )
        if noise_multiplier is None and epsilon is None:
            problems.append(
                "client_dp needs noise_multiplier or epsilon (or both): e.g. "
                "params: {epsilon: 10, delta: 1e-5}"
            )
        if problems:
            raise PrivacyConfigError(problems)
        self.requested_noise_multiplier = noise_multiplier
        self.epsilon = epsilon
        self.delta = float(delta)
        self.accountant = accountant
        #: z for accounting: the whole round's mechanism (update noise and clip count).
        self.noise_multiplier: float | None = noise_multiplier
        #: z on the update alone (equal to ``noise_multiplier`` with a fixed clip).
        self.update_noise_multiplier: float | None = noise_multiplier
        self.clip: NormClip | None = None
        self.sample_rate: float | None = None
        self.expected_clients: float | None = None
        #: How far secure aggregation's fixed-point rounding can push a clipped update
        #: past the bound (``bind_rounding_excess``); the noise covers C + this.
        self.rounding_excess: Callable[[], float] | None = None

    def bind_rounding_excess(self, excess: Callable[[], float]) -> None:
        """Cover ``excess()`` (this round's bound, in L2 norm) in the sensitivity."""
        self.rounding_excess = excess

    def bind(
        self, clip: NormClip, sample_rate: float, expected_clients: float, rounds: int
    ) -> list[str]:
        """Wire to the clip transform and the strategy's sampling; calibrate z.

        Returns the problems found (empty when the combination is sound and the
        budget fits at least one round); the caller raises them with the others.
        """
        self.clip = clip
        self.sample_rate = float(sample_rate)
        self.expected_clients = float(expected_clients)
        z = self.noise_multiplier
        if z is None:
            assert self.epsilon is not None  # the constructor requires one of the two
            try:
                z = calibrate_noise(self.epsilon, sample_rate, rounds, self.delta, self.accountant)
            except PrivacyConfigError as exc:
                return [f"client_dp: {p}" for p in exc.problems]
        elif self.epsilon is not None:
            first = compute_epsilon(z, sample_rate, 1, self.delta, self.accountant)
            if first > self.epsilon:
                return [
                    f"client_dp: noise_multiplier={z} spends epsilon={first:.4g} in one round, "
                    f"more than the budget epsilon={self.epsilon}; raise noise_multiplier or "
                    "epsilon, or leave noise_multiplier unset to have it calibrated"
                ]
        self.noise_multiplier = z
        self.update_noise_multiplier = z
        if clip.adaptive:
            sigma_b = (
                clip.count_noise_stddev
                if clip.count_noise_stddev is not None
                else expected_clients / 20
            )
            clip.bind(expected_clients, sigma_b)
            if sigma_b <= 0 or z >= 2 * sigma_b:
                return [
                    f"client_dp: adaptive clipping with count_noise_stddev={sigma_b:.4g} cannot "
                    f"reach the effective noise multiplier {z:.4g} (needs z < 2 * "
                    "count_noise_stddev); raise transforms' clip count_noise_stddev, sample "
                    "more clients per round, or use a fixed clip (drop target_quantile)"
                ]
            self.update_noise_multiplier = (z**-2 - (2 * sigma_b) ** -2) ** -0.5
        return []

    def on_server(
        self, aggregate: StateDict, ctx: TransformContext
    ) -> tuple[StateDict, dict[str, float]]:
        # One client moves the mean by at most its clipped norm (plus what secure
        # aggregation's rounding may add) over the fixed denominator.
        sensitivity = self._sensitivity()
        assert self.update_noise_multiplier is not None and self.expected_clients is not None
        std = self.update_noise_multiplier * sensitivity / self.expected_clients
        gen = ctx.noise_generator("client_dp", "noise")
        done = ctx.noised
        noised = {}
        for key, value in aggregate.items():
            if key.startswith(AUX_PREFIX) or not value.is_floating_point():
                noised[key] = value  # side channels carry their own noise (see NormClip)
            else:
                noise = torch.randn(value.shape, generator=gen, dtype=torch.float64)
                if done is not None and key in done:
                    # The round's only client drew these itself (``sum_noise_std``).
                    noise = noise.masked_fill(done[key], 0.0)
                noised[key] = (value.double() + std * noise).to(value.dtype)
        return noised, {
            "noise_std": std,
            "noise_multiplier": float(self.noise_multiplier or 0.0),
        }

    def sum_noise_std(self, key: str, value: torch.Tensor) -> float:
        """z * C on every model tensor: ``on_server``'s noise before the denominator.

        With secure aggregation's rounding excess too, although a lone client's update
        is not encoded: every coordinate of every round then has the same noise, and
        how much does not tell a round of one client from the others.
        """
        if key.startswith(AUX_PREFIX) or not value.is_floating_point():
            return 0.0
        sensitivity = self._sensitivity()
        assert self.update_noise_multiplier is not None  # set by bind, as the clip
        return float(sensitivity * self.update_noise_multiplier)

    def _sensitivity(self) -> float:
        """C, plus what secure aggregation's rounding may add (``bind_rounding_excess``)."""
        if self.clip is None or self.expected_clients is None:
            raise PrivacyConfigError(
                [
                    "client_dp was not bound to a clip transform and a strategy; build the "
                    "experiment with fedgen.experiment.build_experiment"
                ]
            )
        sensitivity = self.clip.max_norm
        if self.rounding_excess is not None:
            sensitivity += self.rounding_excess()
        return sensitivity

    def state_dict(self) -> dict[str, Any]:
        # The z a run started with stays its z, even if resumed with more rounds.
        return {
            "noise_multiplier": self.noise_multiplier,
            "update_noise_multiplier": self.update_noise_multiplier,
        }

    def load_state_dict(self, state: dict[str, Any]) -> None:
        if state.get("noise_multiplier") is not None:
            self.noise_multiplier = float(state["noise_multiplier"])
            self.update_noise_multiplier = float(state["update_noise_multiplier"])


def effective_noise_multiplier(update_noise_multiplier: float, count_noise_stddev: float) -> float:
    """Andrew et al. 2021: the single-Gaussian multiplier of update noise plus count noise."""
    if count_noise_stddev <= 0:
        return update_noise_multiplier
    return float((update_noise_multiplier**-2 + (2 * count_noise_stddev) ** -2) ** -0.5)


__all__ = ["ClientLevelDP", "effective_noise_multiplier"]
