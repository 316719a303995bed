"""Configuration of secure aggregation and its resolution for a round of n clients.

A ``SecAggConfig`` is what a recipe sets; ``SecAggConfig.plan(n)`` turns it into
the integers the protocol runs with (Shamir threshold, neighbourhood size,
fixed-point levels) and rejects every combination that could give a wrong sum.

Threshold policy (a decision, documented here): the threshold ``t`` is a
fraction of the clients holding shares of a secret (all ``n`` clients for
SecAgg, a client and its ``k`` neighbours for SecAgg+), or an absolute count.
``t > holders`` and ``t < 2`` are errors (one share would be the secret).
``t`` below a strict majority (``holders // 2 + 1``) is allowed with a
``SecAggSecurityWarning``: Bonawitz et al. (2017, Thm. 6.2/6.3) need
``t > holders / 2`` only against an *active* server that could ask different
survivors for both the self-mask and the key share of one client; against the
honest-but-curious server fedgen simulates, any ``t > #colluding clients`` holds.
The default ``2/3`` tolerates up to a third of dropouts, as in the paper.
"""

from __future__ import annotations

import math
import warnings
from dataclasses import dataclass
from typing import Literal

from fedgen.transforms.secagg.errors import SecAggConfigError, SecAggSecurityWarning

#: Fixed-point levels are capped so that ``value * levels`` is exact in float64.
MAX_LEVELS = 2**52


@dataclass(frozen=True)
class SecAggConfig:
    """What a recipe sets for secure aggregation.

    Args:
        threshold: fraction in (0, 1] of a secret's share holders needed to
            rebuild it, or an absolute count >= 2.
        modulus_bits: ``k`` of the group ``Z_(2^k)`` masked vectors live in (8..64).
        clip: each coordinate of a (weight-scaled) update is clipped to
            ``[-clip, clip]`` before fixed-point encoding.
        value_bits: bits of one client's fixed-point value (sign included);
            ``None`` = as many as ``modulus_bits`` allows without the sum of n
            clients wrapping.
        neighbours: SecAgg+ (Bell et al. 2020): each client masks and shares
            with this many others on a random Harary graph (rounded up to even);
            ``None`` = everyone (SecAgg, Bonawitz et al. 2017).
        rounding: ``"stochastic"`` (unbiased, seeded) or ``"nearest"``.
        dropout_rate: fraction of clients the round loop drops after key
            sharing, to simulate dropouts in tests and benchmarks.
    """

    threshold: float = 2 / 3
    modulus_bits: int = 32
    clip: float = 1.0
    value_bits: int | None = None
    neighbours: int | None = None
    rounding: Literal["stochastic", "nearest"] = "stochastic"
    dropout_rate: float = 0.0

    def __post_init__(self) -> None:
        problems = []
        t = self.threshold
        if isinstance(t, bool) or not isinstance(t, int | float):
            problems.append(f"threshold must be a number, got {t!r}")
        elif isinstance(t, int) and t < 2:
            # (An integer counts share holders; 1 would let any one holder rebuild a
            # secret. Every holder, as a fraction, is 1.0.)
            problems.append(
                f"threshold {t} must be >= 2 shares, or a fraction in (0, 1] written with a "
                "decimal point (1.0 for every share holder)"
            )
        elif isinstance(t, float) and not 0 < t <= 1:
            problems.append(f"threshold {t} must be a fraction in (0, 1] or an integer >= 2")
        if not 8 <= self.modulus_bits <= 64:
            problems.append(f"modulus_bits {self.modulus_bits} must be in 8..64")
        if not (math.isfinite(self.clip) and self.clip > 0):
            problems.append(f"clip {self.clip} must be a finite number > 0")
        if self.value_bits is not None and not 2 <= self.value_bits <= self.modulus_bits:
            problems.append(
                f"value_bits {self.value_bits} must be in 2..modulus_bits ({self.modulus_bits})"
            )
        if self.neighbours is not None and self.neighbours < 2:
            problems.append(f"neighbours {self.neighbours} must be >= 2, or None for all")
        if self.rounding not in ("stochastic", "nearest"):
            problems.append(f"rounding {self.rounding!r}: choose 'stochastic' or 'nearest'")
        if not 0 <= self.dropout_rate < 1:
            problems.append(f"dropout_rate {self.dropout_rate} must be in [0, 1)")
        if problems:
            raise SecAggConfigError("invalid secure-aggregation config: " + "; ".join(problems))

    def plan(self, num_clients: int) -> SecAggPlan:
        """Resolve this config for a round of ``num_clients``; raise if it is unsound."""
        n = num_clients
        if n < 2:
            raise SecAggConfigError(
                f"secure aggregation needs at least 2 clients in a round, got {n}; "
                "sample more clients per round or remove the secagg transform"
            )
        neighbours: int | None = None
        if self.neighbours is not None:
            k = self.neighbours + self.neighbours % 2  # a Harary graph needs an even degree
            neighbours = None if k >= n - 1 else k
        holders = n if neighbours is None else neighbours + 1
        who = (
            f"all {n} clients"
            if neighbours is None
            else f"a client and its {neighbours} neighbours"
        )
        threshold = self._threshold_for(holders, who)
        levels = self._levels_for(n)
        return SecAggPlan(n, holders, threshold, neighbours, levels, self.modulus_bits)

    def _threshold_for(self, holders: int, who: str) -> int:
        t = self.threshold
        count = t if isinstance(t, int) else math.ceil(t * holders - 1e-9)
        if count > holders:
            raise SecAggConfigError(
                f"threshold {count} exceeds the {holders} share holders of each secret "
                f"({who}); lower threshold or raise clients per round / neighbours"
            )
        if count < 2:
            raise SecAggConfigError(
                f"threshold {t} gives {count} share of {holders}: one share would reveal "
                "the secret; raise threshold"
            )
        majority = holders // 2 + 1
        if count < majority:
            warnings.warn(
                f"secure-aggregation threshold {count} of {holders} share holders is below a "
                f"majority ({majority}): sound against an honest-but-curious server only; "
                f"use threshold >= {majority} if the server may deviate from the protocol",
                SecAggSecurityWarning,
                stacklevel=3,
            )
        return count

    def _levels_for(self, n: int) -> int:
        room = 2 ** (self.modulus_bits - 1) - 1  # |sum| must stay below 2^(k-1)
        if self.value_bits is None:
            levels = min(room // n, MAX_LEVELS)
            if levels < 127:
                need = math.ceil(math.log2(127 * n + 1)) + 1
                raise SecAggConfigError(
                    f"modulus_bits {self.modulus_bits} leaves {levels} fixed-point levels per "
                    f"client for {n} clients (fewer than 8 bits); raise modulus_bits to >= {need}"
                )
            return levels
        levels = min(2 ** (self.value_bits - 1) - 1, MAX_LEVELS)
        if n * levels > room:
            need = math.ceil(math.log2(n * levels + 1)) + 1
            raise SecAggConfigError(
                f"the sum of {n} clients of {self.value_bits}-bit values could wrap modulo "
                f"2^{self.modulus_bits}; raise modulus_bits to >= {need}, lower value_bits, "
                "or sample fewer clients per round"
            )
        return levels


@dataclass(frozen=True)
class SecAggPlan:
    """A ``SecAggConfig`` resolved for one round of ``num_clients``.

    ``holders`` clients hold shares of each secret and ``threshold`` of them
    rebuild it; ``neighbours`` is ``None`` for the full graph; one client's
    coordinate ``v`` in ``[-1, 1]`` is encoded as an integer in
    ``[-levels, levels]``.
    """

    num_clients: int
    holders: int
    threshold: int
    neighbours: int | None
    levels: int
    modulus_bits: int
