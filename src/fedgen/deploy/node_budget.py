"""A deployed DP-SGD client's own privacy budget: what it has trained, and when to stop.

In a simulation the server charges every client's accountant and leaves a client out
of the cohorts once its rounds are used (``fedgen.privacy.budget``). A deployed node
does not take the server's word for it. Before each job it records the round and the
digest of the model the job brings, in its ``state-dir`` (else in the run's Flower
``Context``), and refuses:

- a round it trained before, sent again with another model (each would be a fresh
  noisy answer, which the server's accounting does not count); the same round with
  the same model, as a resumed run resends it, is admitted and not charged again;
- a job that would take its epsilon, by its own accountant over the rounds it has
  trained at its own sigma and sampling rate, past its budget: ``max-epsilon`` from
  the node's config when the operator set one, else the recipe's ``dpsgd.epsilon``;
- a round past ``dpsgd.rounds_per_client``, when the recipe caps them.
"""

from __future__ import annotations

import json
from typing import Any

from fedgen.deploy.node_files import node_path, write_owner_only
from fedgen.privacy.accounting import PrivacyAccountant
from fedgen.privacy.budget import SampleLevelBudget

#: The ``Context.state`` record of trained rounds when the node has no state-dir.
STATE_ROUNDS = "fedgen.dpsgd_rounds"


class NodeBudget:
    """One deployed client's record of the DP-SGD rounds it trained in one run."""

    def __init__(self, context: Any, run_id: str, client_id: int) -> None:
        self.context = context
        self.client_id = client_id
        folder = node_path(context, "privacy", run_id, client_id)
        self.path = None if folder is None else folder.with_name(folder.name + ".json")

    def admit(self, round: int, model_digest: str, sample: SampleLevelBudget) -> float:
        """Record a job of ``round`` on the model with ``model_digest`` before it trains;
        the epsilon this client will have spent. Raises ``ValueError`` (the job is
        refused, nothing recorded) when the module docstring's rules forbid it."""
        rounds = self._load()
        seen = rounds.get(str(round))
        if seen == model_digest:
            return self._epsilon(len(rounds), sample)
        if seen is not None:
            raise ValueError(
                f"round {round} was trained here on another model (digest {seen[:12]}, now "
                f"{model_digest[:12]}): a second noisy answer for one round, which no "
                "accounting counts; refused"
            )
        cap = sample.rounds_per_client
        if cap is not None and len(rounds) >= cap:
            raise ValueError(
                f"this client has trained its dpsgd.rounds_per_client={cap} rounds of the "
                f"run, all its noise is calibrated for; round {round} is refused"
            )
        limit = self._limit(sample)
        spent = self._epsilon(len(rounds) + 1, sample)
        if limit is not None and spent > limit:
            raise ValueError(
                f"round {round} would take this client to epsilon={spent:.4g} > its budget "
                f"{limit:g} (delta={sample.delta:g}) after {len(rounds)} rounds; refused"
            )
        rounds[str(round)] = model_digest
        self._save(rounds)
        return spent

    def _limit(self, sample: SampleLevelBudget) -> float | None:
        own = self.context.node_config.get("max-epsilon")
        if own is None:
            return sample.target
        if isinstance(own, bool) or not isinstance(own, int | float) or not own > 0:
            raise ValueError(
                f"this node's max-epsilon={own!r} is not a number > 0; start it with "
                "--node-config 'max-epsilon=10.0'"
            )
        return float(own)

    def _epsilon(self, rounds: int, sample: SampleLevelBudget) -> float:
        cid = self.client_id
        accountant = PrivacyAccountant(sample.mechanism)
        accountant.step(sample.noise_for(cid), sample.rates[cid], sample.steps_of(cid) * rounds)
        return accountant.epsilon(sample.delta)

    def _load(self) -> dict[str, str]:
        try:
            if self.path is None:
                held = self.context.state.get(STATE_ROUNDS)
                text = "{}" if held is None else str(held["json"])
            else:
                text = self.path.read_text() if self.path.is_file() else "{}"
            rounds = json.loads(text)
            if not isinstance(rounds, dict):
                raise ValueError("not a JSON object")
        except (OSError, ValueError, KeyError) as exc:
            # Refusing is safe; starting the count afresh would not be.
            raise ValueError(
                f"this node's record of the DP-SGD rounds it trained ({self.path or 'Context'}) "
                f"is unreadable ({exc}); restore it, or start a new run"
            ) from exc
        return {str(k): str(v) for k, v in rounds.items()}

    def _save(self, rounds: dict[str, str]) -> None:
        text = json.dumps(rounds, sort_keys=True)
        if self.path is None:
            from flwr.app import ConfigRecord

            self.context.state[STATE_ROUNDS] = ConfigRecord({"json": text})
            return
        write_owner_only(self.path, text.encode())
