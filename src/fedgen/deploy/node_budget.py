"""A deployed DP-SGD client's own privacy budget: what it has trained, and when to stop.

In a simulation the server charges every client's accountant and leaves a client out
of the cohorts once its rounds are used (``fedgen.privacy.budget``). A deployed node
does not take the server's word for it. Once a job is read, and before it trains, the
node records the round, the digest of the whole job (``job_digest``: model, seed,
config, steps) and the DP-SGD it will take (sigma, sampling rate, steps), in its
``state-dir``, one file per run, and refuses:

- a round it trained before, sent again as another job, from another private state
  or under a recipe with other noise (its noise is bound to the job and the private
  state, so each would be a fresh noisy answer that no accounting counts); the same job
  resent, as a resumed run resends it, draws the same noise and is not charged again,
  unless a hello since changed a setting that shapes the weights (the recipe's
  fingerprint, recorded with the job): the same noise over another update would cancel
  in the two answers' difference;
- any job of a run whose noise key changed since its rounds were recorded (a replaced
  key file would make a resent round's noise independent of the first);
- a job asking for more DP-SGD steps than the recipe plans for this client;
- a round past ``dpsgd.rounds_per_client``, when the recipe caps them;
- a job that would take this run's epsilon past the recipe's ``dpsgd.epsilon``;
- with ``max-epsilon`` in the node's config, a job that would take the epsilon of
  everything this client has trained on its shard, in every run, past it (at the
  node's ``max-delta``, default 1e-5): the operator's budget, which no server's
  recipe or new run resets.

Each round is accounted at the sigma, rate and steps it trained with, as recorded then:
a later hello with another recipe does not re-price the rounds before it. What a node
refuses reaches the server as that client's failure, in the node's words.
"""

from __future__ import annotations

import dataclasses
import json
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from fedgen.deploy.node_files import check_run_id, locked, state_dir, write_owner_only
from fedgen.privacy.accounting import PrivacyAccountant
from fedgen.privacy.budget import SampleLevelBudget

#: The delta ``max-epsilon`` is measured at when the node config gives no ``max-delta``.
DEFAULT_MAX_DELTA = 1e-5


@dataclass(frozen=True)
class TrainedRound:
    """One round a client trained with DP-SGD: the job and what it cost."""

    job: str
    sigma: float
    rate: float
    steps: int


class NodeBudget:
    """One deployed client's record of the DP-SGD rounds it trained, in every run."""

    def __init__(self, context: Any, run_id: str, client_id: int) -> None:
        folder = state_dir(context)
        if folder is None:
            raise ValueError(
                "DP-SGD on a deployed node needs a state-dir: the noise key and the record "
                "of the rounds it trained must outlive a restart, or a server could ask "
                "again after one; start the node with --node-config 'state-dir=\"/path\"'"
            )
        if not run_id:
            raise ValueError("a DP-SGD job of a run without an id: no record can name it")
        self.context = context
        self.client_id = client_id
        self.folder = folder / "privacy"
        self.path = self.folder / f"run-{check_run_id(run_id)}-client-{client_id}.json"

    def has_rounds(self) -> bool:
        """Whether this client trained rounds of the run with DP-SGD here."""
        return self.path.is_file()

    def admit(
        self,
        round: int,
        job: str,
        steps: int,
        sample: SampleLevelBudget,
        key_id: str,
        also: Sequence[str] = (),
    ) -> float:
        """Record the job ``job`` (``job_binding``) of ``round``, which takes ``steps``
        DP-SGD steps with the noise key whose fingerprint is ``key_id``, before it trains;
        the epsilon this client will have spent in the run. ``also``: the names the same
        job had when recorded by an older fedgen (the recipe's legacy fingerprints), a
        resend under which is the same job. Raises ``ValueError`` (the job is refused,
        nothing recorded) when the module docstring's rules forbid it."""
        cid = self.client_id
        planned = sample.steps_of(cid)
        if steps != planned:
            raise ValueError(
                f"the job asks for {steps} DP-SGD steps, the recipe plans {planned} for "
                "this client a round, and its noise is calibrated for those; refused"
            )
        limit, max_delta = self._operator_limit()
        this = TrainedRound(job, sample.noise_for(cid), sample.rates[cid], steps)
        with locked(self.folder / f"client-{cid}.lock"):
            key, rounds = self._load(self.path)
            if rounds and key != key_id:
                raise ValueError(
                    "this client's noise key for the run changed since it trained rounds "
                    "of it (its key file was replaced): a resent round would draw noise "
                    "independent of the first; refused (restore the key file, or start a "
                    "new run)"
                )
            seen = rounds.get(round)
            if seen is not None and seen.job in also:
                seen = dataclasses.replace(seen, job=job)
            if seen == this:
                return _epsilon(rounds.values(), sample.mechanism, sample.delta)
            if seen is not None:
                raise ValueError(
                    f"round {round} was trained here as another job or with other noise "
                    f"(digest {seen.job[:12]}, sigma {seen.sigma:.4g}; now {job[:12]}, "
                    f"{this.sigma:.4g}): a second noisy answer for one round, which no "
                    "accounting counts; refused (a resumed run must resend its rounds "
                    "bit for bit, from the same private state and recipe)"
                )
            cap = sample.rounds_per_client
            if cap is not None and len(rounds) >= cap:
                raise ValueError(
                    f"this client has trained its dpsgd.rounds_per_client={cap} rounds of "
                    f"the run, all its noise is calibrated for; round {round} is refused"
                )
            after = [*rounds.values(), this]
            spent = _epsilon(after, sample.mechanism, sample.delta)
            if sample.target is not None and spent > sample.target:
                raise ValueError(
                    f"round {round} would take this client to epsilon={spent:.4g} in this "
                    f"run, past the recipe's dpsgd.epsilon={sample.target:g} "
                    f"(delta={sample.delta:g}) after {len(rounds)} rounds; refused"
                )
            if limit is not None:
                every = [*self._other_runs(), *after]
                lifetime = _epsilon(every, sample.mechanism, max_delta)
                if lifetime > limit:
                    raise ValueError(
                        f"round {round} would take this client's shard to epsilon="
                        f"{lifetime:.4g} over every run it trained in, past this node's "
                        f"max-epsilon={limit:g} (delta={max_delta:g}); refused"
                    )
            rounds[round] = this
            self._save(key_id, rounds)
        return spent

    def _operator_limit(self) -> tuple[float | None, float]:
        """The node config's ``max-epsilon`` (None: not set) and ``max-delta``."""
        config = self.context.node_config
        own = config.get("max-epsilon")
        delta = _positive(config.get("max-delta", DEFAULT_MAX_DELTA), "max-delta", "1e-5")
        if not delta < 1:
            raise ValueError(f"this node's max-delta={delta!r} must be below 1, e.g. 1e-5")
        return (None if own is None else _positive(own, "max-epsilon", "10.0")), delta

    def _other_runs(self) -> list[TrainedRound]:
        """Every round this client trained in the runs before this one."""
        pattern = f"run-*-client-{self.client_id}.json"
        others = [p for p in sorted(self.folder.glob(pattern)) if p != self.path]
        return [r for p in others for r in self._load(p)[1].values()]

    def _load(self, path: Path) -> tuple[str | None, dict[int, TrainedRound]]:
        """A record's noise key fingerprint and rounds (none for a run not begun)."""
        try:
            if not path.is_file():
                return None, {}
            held = json.loads(path.read_text())
            if not isinstance(held, dict):
                raise ValueError("not a JSON object")
            rounds = {
                int(r): TrainedRound(
                    str(e["job"]), float(e["sigma"]), float(e["rate"]), int(e["steps"])
                )
                for r, e in held["rounds"].items()
            }
            return str(held["key"]), rounds
        except (OSError, ValueError, KeyError, TypeError) as exc:
            # Refusing is safe; starting the count afresh would not be.
            raise ValueError(
                f"this node's record of the DP-SGD rounds it trained ({path}) is unreadable "
                f"({type(exc).__name__}: {exc}); restore it from a backup (refused until then)"
            ) from exc

    def _save(self, key_id: str, rounds: dict[int, TrainedRound]) -> None:
        held = {
            "key": key_id,
            "rounds": {
                str(r): {"job": t.job, "sigma": t.sigma, "rate": t.rate, "steps": t.steps}
                for r, t in sorted(rounds.items())
            },
        }
        write_owner_only(self.path, json.dumps(held, sort_keys=True).encode())


def _positive(value: Any, name: str, example: str) -> float:
    if isinstance(value, bool) or not isinstance(value, int | float) or not value > 0:
        raise ValueError(
            f"this node's {name}={value!r} is not a number > 0; start it with "
            f"--node-config '{name}={example}'"
        )
    return float(value)


def _epsilon(rounds: Iterable[TrainedRound], mechanism: str, delta: float) -> float:
    """Epsilon of ``rounds`` (TrainedRounds) composed, each at its own sigma and rate."""
    steps: dict[tuple[float, float], int] = {}
    for r in rounds:
        steps[(r.sigma, r.rate)] = steps.get((r.sigma, r.rate), 0) + r.steps
    accountant = PrivacyAccountant(mechanism)
    for (sigma, rate), n in sorted(steps.items()):
        accountant.step(sigma, rate, n)
    return accountant.epsilon(delta)
