"""What a run has spent, round by round, and whether the next round still fits.

``Federation`` asks ``stop_reason`` before each round and calls ``record`` after it;
``record`` returns the figures that go into the round's metrics (``epsilon``,
``delta``, ...), and the state goes into every checkpoint so a resumed run accounts
exactly as an uninterrupted one.

Client level (DP-FedAvg): one step of the Poisson-subsampled Gaussian mechanism per
round that released a noised aggregate, at the client sampling rate q.

Sample level (DP-SGD): one accountant per client; every client the strategy sampled
is charged its local steps at its own Poisson rate q_i = batch_size / n_i, whether
or not its update arrived (a client that failed may still have trained). The run
reports the largest epsilon over clients, and stops before any client could exceed
the budget in the next round.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, Protocol

from fedgen.privacy.accounting import PrivacyAccountant


class NoiseMechanism(Protocol):
    """What client-level accounting reads from the noise transform (``ClientLevelDP``).

    Read each round rather than copied: z is calibrated after the transform is built.
    A protocol, not the transform's class, keeps accounting below the transforms layer.
    """

    @property
    def delta(self) -> float: ...

    @property
    def epsilon(self) -> float | None: ...

    @property
    def noise_multiplier(self) -> float | None: ...


@dataclass
class ClientLevelBudget:
    """Accounting for client-level DP: the noise transform and its sampling rate."""

    transform: NoiseMechanism
    sample_rate: float
    accountant: PrivacyAccountant

    @property
    def delta(self) -> float:
        return self.transform.delta

    @property
    def target(self) -> float | None:
        return self.transform.epsilon

    @property
    def noise_multiplier(self) -> float:
        z = self.transform.noise_multiplier
        assert z is not None  # bound before the first round
        return z

    def epsilon(self) -> float:
        return self.accountant.epsilon(self.delta)

    def epsilon_next(self) -> float:
        return self.accountant.epsilon_after(self.delta, self.noise_multiplier, self.sample_rate)


@dataclass
class SampleLevelBudget:
    """Accounting for DP-SGD: one accountant per client.

    ``steps_of(client_id)`` is the number of DP-SGD steps a client takes per round;
    ``rates`` its Poisson sampling rate. With ``rounds_per_client``, a client takes part
    in at most that many rounds (the noise was calibrated for them): ``eligible`` leaves
    it out of later cohorts. ``client_noise`` holds each client's own sigma when they
    differ (``dpsgd.noise_per_client``); ``noise_multiplier`` is then the largest.
    """

    noise_multiplier: float
    delta: float
    target: float | None
    mechanism: str
    rates: dict[int, float]
    steps_of: Callable[[int], int]
    engine: Any = None  # the DpSgdEngine attached to the task, whose sigma this is
    rounds_per_client: int | None = None
    client_noise: dict[int, float] | None = None
    accountants: dict[int, PrivacyAccountant] = field(default_factory=dict)
    _eps: dict[int, float] = field(default_factory=dict)
    _eps_next: dict[int, float] = field(default_factory=dict)

    def noise_for(self, cid: int) -> float:
        """The sigma client ``cid`` trains with."""
        if self.client_noise is None:
            return self.noise_multiplier
        return self.client_noise[cid]

    def charge(self, client_ids: list[int]) -> None:
        for cid in client_ids:
            acc = self.accountants.setdefault(cid, PrivacyAccountant(self.mechanism))
            acc.step(self.noise_for(cid), self.rates[cid], self.steps_of(cid))
            self._eps.pop(cid, None)
            self._eps_next.pop(cid, None)

    def rounds_taken(self, cid: int) -> int:
        """Rounds client ``cid`` has taken part in (from its accountant's steps)."""
        acc = self.accountants.get(cid)
        return 0 if acc is None else acc.steps // self.steps_of(cid)

    def eligible(self, client_ids: list[int]) -> list[int]:
        """The clients that may still take part (all of them without ``rounds_per_client``)."""
        if self.rounds_per_client is None:
            return list(client_ids)
        return [c for c in client_ids if self.rounds_taken(c) < self.rounds_per_client]

    def epsilon(self) -> float:
        """The largest epsilon over clients (0 before any step)."""
        for cid, acc in self.accountants.items():
            if cid not in self._eps:
                self._eps[cid] = acc.epsilon(self.delta)
        return max(self._eps.values(), default=0.0)

    def epsilon_next(self) -> float:
        """The largest epsilon any client would have after taking part in one more round."""
        worst = 0.0
        for cid, rate in self.rates.items():
            if cid not in self.eligible([cid]):
                continue  # it sits out every later round
            if cid not in self._eps_next:
                acc = self.accountants.get(cid) or PrivacyAccountant(self.mechanism)
                self._eps_next[cid] = acc.epsilon_after(
                    self.delta, self.noise_for(cid), rate, self.steps_of(cid)
                )
            worst = max(worst, self._eps_next[cid])
        return worst


class PrivacyAccounting:
    """The run's privacy ledger: client-level, sample-level, or both."""

    def __init__(
        self,
        client: ClientLevelBudget | None = None,
        sample: SampleLevelBudget | None = None,
    ) -> None:
        self.client = client
        self.sample = sample

    @property
    def unit(self) -> str:
        """What one unit of privacy is: a whole client, or one training example."""
        return "client" if self.client is not None else "example"

    def eligible(self, client_ids: list[int]) -> list[int]:
        """The clients the next round may sample: those with rounds of DP-SGD left."""
        return client_ids if self.sample is None else self.sample.eligible(client_ids)

    def stop_reason(self) -> str | None:
        """Why the next round must not run (its spending would exceed a budget, or every
        client has used its ``rounds_per_client``), or None."""
        if self.sample is not None and not self.sample.eligible(sorted(self.sample.rates)):
            return (
                f"every client has taken part in its dpsgd.rounds_per_client="
                f"{self.sample.rounds_per_client} rounds; the run stopped at sample-level "
                f"epsilon={self.sample.epsilon():.4g}"
            )
        for level, budget in (("client-level", self.client), ("sample-level", self.sample)):
            if budget is None or budget.target is None:
                continue
            nxt = budget.epsilon_next()
            if nxt > budget.target:
                return (
                    f"privacy budget exhausted: one more round would spend {level} "
                    f"epsilon={nxt:.4g} > budget {budget.target:g} (delta={budget.delta:g}); "
                    f"the run stopped at epsilon={budget.epsilon():.4g}"
                )
        return None

    def record(self, client_ids: list[int], aggregated: bool) -> dict[str, float]:
        """Charge one finished round; return the figures for the round's metrics."""
        if self.client is not None and aggregated:
            self.client.accountant.step(self.client.noise_multiplier, self.client.sample_rate)
        if self.sample is not None:
            self.sample.charge(client_ids)
        return self.figures()

    def figures(self) -> dict[str, float]:
        """``epsilon``/``delta`` of the run's unit, plus each level's own when both are on."""
        out: dict[str, float] = {}
        if self.sample is not None:
            out["sample_epsilon"] = self.sample.epsilon()
            out["sample_delta"] = self.sample.delta
            out["epsilon"], out["delta"] = out["sample_epsilon"], out["sample_delta"]
        if self.client is not None:
            out["client_epsilon"] = self.client.epsilon()
            out["client_delta"] = self.client.delta
            out["epsilon"], out["delta"] = out["client_epsilon"], out["client_delta"]
        if self.client is None or self.sample is None:
            # One level only: the flat keys say it all.
            out = {"epsilon": out["epsilon"], "delta": out["delta"]}
        return out

    def describe(self) -> dict[str, Any]:
        """Flat summary keys: the guarantee, its unit and how it was computed."""
        out: dict[str, Any] = dict(self.figures())
        out["privacy_unit"] = self.unit
        if self.client is not None:
            out["accountant"] = self.client.accountant.mechanism
            out["noise_multiplier"] = self.client.noise_multiplier
            out["client_sample_rate"] = self.client.sample_rate
            if self.client.target is not None:
                out["epsilon_budget"] = self.client.target
        if self.sample is not None:
            out["dpsgd_noise_multiplier"] = self.sample.noise_multiplier
            if self.sample.client_noise is not None:
                out["dpsgd_noise_multiplier_min"] = min(self.sample.client_noise.values())
            # With both levels the flat keys are the client level's (as epsilon is).
            prefix = "dpsgd_" if self.client is not None else ""
            out[f"{prefix}accountant"] = self.sample.mechanism
            if self.sample.target is not None:
                out[f"{prefix}epsilon_budget"] = self.sample.target
        return out

    def state_dict(self) -> dict[str, Any]:
        state: dict[str, Any] = {}
        if self.client is not None:
            state["client"] = self.client.accountant.state_dict()
        if self.sample is not None:
            state["sample"] = {
                str(cid): acc.state_dict() for cid, acc in sorted(self.sample.accountants.items())
            }
            # The sigma a run started with stays its sigma, even if resumed with more rounds.
            state["dpsgd_noise_multiplier"] = self.sample.noise_multiplier
            if self.sample.client_noise is not None:
                state["dpsgd_client_noise"] = {
                    str(cid): z for cid, z in sorted(self.sample.client_noise.items())
                }
        return state

    def load_state_dict(self, state: dict[str, Any]) -> None:
        if self.client is not None and "client" in state:
            self.client.accountant.load_state_dict(state["client"])
        if self.sample is not None and "sample" in state:
            self.sample.accountants = {}
            for cid, acc_state in state["sample"].items():
                acc = PrivacyAccountant(self.sample.mechanism)
                acc.load_state_dict(acc_state)
                self.sample.accountants[int(cid)] = acc
            self.sample._eps.clear()
            self.sample._eps_next.clear()
        if self.sample is not None and "dpsgd_noise_multiplier" in state:
            self.sample.noise_multiplier = float(state["dpsgd_noise_multiplier"])
            if "dpsgd_client_noise" in state:
                self.sample.client_noise = {
                    int(cid): float(z) for cid, z in state["dpsgd_client_noise"].items()
                }
            if self.sample.engine is not None:
                self.sample.engine.noise_multiplier = self.sample.noise_multiplier
                self.sample.engine.client_noise = self.sample.client_noise
