"""The Backend contract: how client work is executed."""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from typing import Any, ClassVar

from fedgen.data.client_data import ClientData
from fedgen.engine.backends.secagg_client import answer_phase
from fedgen.engine.backends.signing import ClientKeys
from fedgen.engine.client_side import ClientSide
from fedgen.engine.downlink import DownlinkSource
from fedgen.engine.faults import FaultPlan
from fedgen.privacy.noise_key import client_noise_key
from fedgen.tasks.base import Task
from fedgen.transforms.base import UpdateTransform
from fedgen.types import ClientResult, RoundPlan, StateDict


@dataclass
class LocalWork:
    """Everything a client needs for one round besides its own data."""

    task: Task
    global_state: StateDict
    transforms: Sequence[UpdateTransform]
    local_steps: int | None
    local_epochs: float | None
    round: int = 0
    #: The run's secret DP noise key (``fedgen.privacy.noise_key``); None: root-seeded.
    #: The server's: a client draws with its own (``client_noise_key``), never this one.
    noise_key: bytes | None = field(default=None, repr=False)
    #: Faults to inject into the clients (``fedgen.engine.faults``); None: none.
    faults: FaultPlan | None = None
    #: The clients' signing keys when the run keeps a ledger; None: updates go unsigned.
    keys: ClientKeys | None = field(default=None, repr=False)
    #: What a client running elsewhere builds its task, transforms and shard from.
    client_side: ClientSide | None = None
    #: True when a secure-aggregation stage follows training: each client checks its
    #: update (``max_update_norm``), keeps it, and replies without it (``held``).
    secure: bool = False
    max_update_norm: float | None = None
    #: Compressed downlink (``fedgen.engine.downlink``): what each client's job carries
    #: instead of ``global_state`` (deltas since the model it holds); None: the state.
    downlink: DownlinkSource | None = None
    #: The initial model the client builds from the recipe (the downlink's version -1).
    initial_state: StateDict | None = field(default=None, repr=False)
    #: A client that got its job over a wire: its own noise key, as the job carried it
    #: (``noise_key`` is then None). Else None: the key is derived from ``noise_key``.
    client_key: bytes | None = field(default=None, repr=False)
    #: A deployed client's own key (the job said ``own``): what its DP noise key is bound
    #: to, the whole job and the private state it trains from (``job_binding``). A server
    #: that changes anything of a job (model, round, seed, config, steps) gets fresh
    #: noise; the same job resent, as a resumed run sends it, draws the same. None: not
    #: bound.
    noise_binding: str | None = None

    def own_noise_key(self, client_id: int) -> bytes | None:
        """The key client ``client_id`` draws its own DP noise with."""
        if self.client_key is not None:
            return self.client_key
        return client_noise_key(self.noise_key, client_id)


class Backend(ABC):
    """Runs the clients of a plan and yields their results, failures included."""

    #: True for a backend that keeps jobs in flight between rounds (``submit`` and
    #: ``arrivals``), as wall-clock FedBuff needs.
    supports_async: ClassVar[bool] = False

    @abstractmethod
    def run(
        self,
        plan: RoundPlan,
        work: LocalWork,
        clients: dict[int, ClientData],
        private_states: dict[int, StateDict],
    ) -> Iterator[ClientResult]:
        """Yield one ``ClientResult`` per instruction, in plan order.

        ``private_states`` holds each client's non-federated tensors between
        rounds; the backend reads and updates it in place.
        """

    def close(self) -> None:  # noqa: B027 - optional hook, most backends hold nothing
        """Release workers or connections; called when the run loop stops."""

    def state_dict(self) -> dict[str, Any]:
        """What the backend carries between rounds that a resumed run needs (checkpointed
        with the federation); most backends carry nothing."""
        return {}

    def load_state_dict(self, state: dict[str, Any]) -> None:  # noqa: B027 - optional
        """Restore what ``state_dict`` returned (``{}`` for a checkpoint without one)."""

    # -- the clients' side of a secure-aggregation stage ------------------------------

    @property
    def held(self) -> dict[int, dict[str, Any]]:
        """What simulated clients keep between a round's messages (their exported
        secure-aggregation halves): the clients' belongings, never read by the server."""
        store: dict[int, dict[str, Any]] = self.__dict__.setdefault("_held", {})
        return store

    def exchange(self, round: int, requests: dict[int, bytes]) -> dict[int, bytes | None]:
        """Deliver one encoded request to each client; return each encoded reply.

        After training, a stage of the round (secure aggregation) talks to the
        round's clients with this. A simulation's clients answer here, from what
        they hold (``held``); a deployment overrides it to send real messages. None
        stands for a client that did not answer.
        """
        replies: dict[int, bytes | None] = {}
        for cid, request in requests.items():
            replies[cid], kept = answer_phase(request, self.held.get(cid), cid)
            if kept is None:
                self.held.pop(cid, None)
            else:
                self.held[cid] = kept
        return replies

    def end_stage(self) -> None:
        """Forget what simulated clients held for the round's stage (keys, updates)."""
        self.held.clear()
