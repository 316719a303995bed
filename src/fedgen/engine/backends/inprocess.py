"""Sequential in-process backend: one task instance reused for every client."""

from __future__ import annotations

import logging
from collections.abc import Iterator

from pydantic import BaseModel, ConfigDict

from fedgen.data.client_data import ClientData
from fedgen.engine.backends.base import Backend, LocalWork
from fedgen.engine.backends.local_training import job_message, run_client
from fedgen.errors import FedgenError
from fedgen.registry import BACKENDS
from fedgen.types import ClientResult, RoundPlan, StateDict

log = logging.getLogger(__name__)


@BACKENDS.register("inprocess")
class InProcessBackend(Backend):
    """Runs clients one after another in this process; a crash becomes a failure value."""

    class Params(BaseModel):
        """The recipe's ``backend.params`` of ``inprocess``: none."""

        model_config = ConfigDict(extra="forbid")

    def run(
        self,
        plan: RoundPlan,
        work: LocalWork,
        clients: dict[int, ClientData],
        private_states: dict[int, StateDict],
    ) -> Iterator[ClientResult]:
        for ins in plan.instructions:
            data = clients[ins.client_id]
            try:
                result, private = run_client(
                    ins, work, data, private_states.get(ins.client_id), len(clients), self.held
                )
            except Exception as exc:  # a client crash must not end the round
                log.warning("client %d failed in round %d: %r", ins.client_id, plan.round, exc)
                try:  # what was sent to it all the same, as the process pool counts
                    sent = job_message(ins, work, len(clients)).nbytes
                except FedgenError:
                    sent = 0  # a job that cannot be encoded was never sent
                yield ClientResult(
                    client_id=ins.client_id,
                    num_examples=data.num_examples,
                    failure=f"{type(exc).__name__}: {exc}",
                    bytes_down=sent,
                )
                continue
            if private:
                private_states[ins.client_id] = private
            yield result
