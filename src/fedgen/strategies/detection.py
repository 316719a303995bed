"""A detection stage: flag clients whose losses or update statistics are outliers.

In the spirit of FedDetect (Jin and Li 2022, on detecting malicious clients of a
federated GAN from what they report): each round, before aggregation, every client
is described by its update's L2 norm, the cosine of its update with the round's
coordinate-wise median update, and each loss it reports (``loss/...``). A client is
flagged when one of these lies more than ``threshold`` robust standard deviations
(1.4826 x the median absolute deviation) from the round's median: on either side for
norms and losses (a scaled update is long, a free rider's is zero), below it only for
the cosine. Flags are logged every round (``strategy/detect/flagged`` and one
``strategy/detect/flag/<client>`` per flagged client in ``metrics.jsonl``); with
``exclude`` the flagged clients' results are left out of the round's aggregate.

``DetectingStrategy`` wraps any strategy: what it does not screen it passes through.
It needs every individual update, so secure aggregation refuses it; and its flags
(and exclusions) depend on who took part, so client-level DP refuses it too. Under
DP-SGD clients report no losses (a loss of a client's batches is a figure no noise
covers): it then judges by the norm and the cosine alone.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Iterable
from typing import Any

import torch

from fedgen.strategies.base import Aggregate, Needs, Strategy
from fedgen.types import ClientResult, RoundPlan, StateDict

log = logging.getLogger(__name__)

#: A robust z-score's scale for a normal distribution's standard deviation.
MAD_SCALE = 1.4826


def robust_z(values: torch.Tensor) -> torch.Tensor:
    """``(x - median) / (1.4826 MAD)`` per entry of a 1-D float64 tensor; a spread of zero
    (all equal) gives finite scores against a tiny floor instead of a division by zero."""
    median = midpoint_median(values)
    mad = midpoint_median((values - median).abs())
    floor = 1e-12 + 1e-6 * float(median.abs())
    return (values - median) / (MAD_SCALE * mad).clamp_min(floor)


def midpoint_median(values: torch.Tensor) -> torch.Tensor:
    """The median along dim 0, the mean of the two middle values for an even count
    (torch.median takes the lower one; torch.quantile refuses inputs past 16M entries)."""
    ordered = torch.sort(values, dim=0).values
    n = values.shape[0]
    return (ordered[(n - 1) // 2] + ordered[n // 2]) / 2


class OutlierDetector:
    """Flags the clients whose statistics are robust-z outliers (see module docstring).

    Args:
        threshold: how many robust standard deviations make an outlier.
    """

    def __init__(self, threshold: float = 3.5) -> None:
        if not threshold > 0:
            raise ValueError(f"detection threshold must be > 0, got {threshold}")
        self.threshold = threshold

    def statistics(self, results: list[ClientResult]) -> dict[str, torch.Tensor]:
        """Per statistic, one value per result (in ``results``' order)."""
        # Float tensors only: an integer one (a BatchNorm's step counter) is no gradient,
        # and its delta (the local step count) would outweigh every weight in the norm.
        first = results[0].update or {}
        names = sorted(k for k, t in first.items() if t.is_floating_point())
        rows = torch.stack(
            [torch.cat([(r.update or {})[k].double().reshape(-1) for k in names]) for r in results]
        )
        median = midpoint_median(rows)
        norms = rows.norm(dim=1)
        cosine = rows @ median / (norms * median.norm()).clamp_min(1e-30)
        stats = {"norm": norms, "cosine": cosine}
        losses = sorted({k for r in results for k in r.metrics if k.startswith("loss/")})
        for key in losses:
            if all(key in r.metrics for r in results):
                stats[key] = torch.tensor([float(r.metrics[key]) for r in results])
        return stats

    def flag(self, results: list[ClientResult]) -> dict[int, str]:
        """Client id -> the statistic that made it an outlier (first found), for every
        flagged client; none with fewer than 3 results (no spread to judge by)."""
        if len(results) < 3:
            return {}
        flagged: dict[int, str] = {}
        for name, values in self.statistics(results).items():
            z = robust_z(values)
            outlying = z < -self.threshold if name == "cosine" else z.abs() > self.threshold
            for res, out, score in zip(results, outlying.tolist(), z.tolist(), strict=True):
                if out and res.client_id not in flagged:
                    flagged[res.client_id] = f"{name} z={score:.1f}"
        return flagged


class DetectingStrategy(Strategy):
    """``inner`` with a detection stage before its aggregation.

    Args:
        inner: the strategy that configures, aggregates and applies.
        detector: what flags clients.
        exclude: leave flagged clients out of the aggregate (else only log them).
    """

    needs = Needs.INDIVIDUAL
    why_individual = "the detection stage screens each client's update statistics"

    def __init__(self, inner: Strategy, detector: OutlierDetector, exclude: bool = False) -> None:
        self.inner = inner
        self.detector = detector
        self.exclude = exclude
        self.sampler = inner.sampler

    def __getattr__(self, name: str) -> Any:
        # Anything the stage does not define (min_clients, expected_clients, ...) is the
        # inner strategy's; only called for attributes not found on the wrapper itself.
        if name == "inner":
            raise AttributeError(name)
        return getattr(self.inner, name)

    def configure(self, round: int, client_ids: list[int], rng: Any) -> RoundPlan:
        return self.inner.configure(round, client_ids, rng)

    def aggregate(
        self,
        round: int,
        results: Iterable[ClientResult],
        scale: Callable[[ClientResult], ClientResult] | None = None,
    ) -> Aggregate:
        """Flag outliers among ``results`` as the clients sent them, then aggregate the
        kept ones, each through ``scale`` first if given (FedBuff's staleness weight: a
        stale update scaled down is no sign of a free rider)."""
        received = list(results)
        flagged = self.detector.flag(received)
        if flagged:
            log.info("round %d: detection flags clients %s", round, flagged)
        kept = [r for r in received if r.client_id not in flagged] if self.exclude else received
        agg = self.inner.aggregate(round, kept if scale is None else [scale(r) for r in kept])
        agg.metrics["detect/flagged"] = float(len(flagged))
        agg.metrics.update({f"detect/flag/{cid}": 1.0 for cid in sorted(flagged)})
        return agg

    def apply(self, round: int, global_state: StateDict, aggregate: Aggregate) -> StateDict:
        return self.inner.apply(round, global_state, aggregate)

    def evaluation_state(self, global_state: StateDict) -> StateDict:
        return self.inner.evaluation_state(global_state)

    def client_evaluation_state(
        self, client_id: int, global_state: StateDict, private: StateDict
    ) -> StateDict:
        return self.inner.client_evaluation_state(client_id, global_state, private)

    @property
    def averaging(self) -> bool:
        return self.inner.averaging

    def dp_problems(self, what: str, need_independent_sampling: bool) -> list[str]:
        return [
            f"{what}: the detection stage's flags (and exclusions) depend on which clients "
            "took part and what they sent, which the DP analysis does not cover; remove the "
            "detection section"
        ]

    def state_dict(self) -> dict[str, Any]:
        return self.inner.state_dict()

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.inner.load_state_dict(state)
