"""What a client builds where it runs: its task, its update pipeline, its data by id.

A client that runs in another process or on another machine receives messages
only (``fedgen.wire``); it never receives the server's Python objects. It builds
its own copy of the task and of the client halves of the transforms, and loads its
own shard, from a ``ClientSide``: a small picklable description that ``open``s into
a ``ClientKit`` where the client runs. ``fedgen.experiment.RecipeClientSide``
builds everything from the recipe (partitioning is deterministic from the recipe
and the seed, so no shard is shipped); ``LocalClientSide`` hands over objects that
already exist, for a federation assembled in Python rather than from a recipe (its
workers then receive pickled copies, as a test harness may want).
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field

from fedgen.data.client_data import ClientData
from fedgen.engine.faults import FaultPlan
from fedgen.errors import FedgenError
from fedgen.privacy.budget import SampleLevelBudget
from fedgen.tasks.base import Task
from fedgen.transforms.base import UpdateTransform
from fedgen.types import StateDict


class UnknownClientError(FedgenError):
    """A client id that the recipe's partition does not have."""


class ClientBuildError(FedgenError):
    """A client could not build its parts (e.g. a recipe its fedgen cannot read)."""


@dataclass
class ClientKit:
    """A client's own parts, as built where it runs."""

    task: Task
    transforms: Sequence[UpdateTransform]
    faults: FaultPlan | None
    #: Shards by client id. A deployed client holds one; a simulation worker may hold all.
    shards: Mapping[int, ClientData] = field(repr=False)
    #: The initial federated model, as the recipe builds it (the compressed downlink's
    #: base for a client's first job); None when the run has no compressed downlink.
    initial_state: StateDict | None = field(default=None, repr=False)
    #: The recipe's DP-SGD accounting (each client's sigma, rate, steps and budget), by
    #: which a deployed client keeps its own (``fedgen.deploy.node_budget``); None
    #: without DP-SGD.
    sample_budget: SampleLevelBudget | None = field(default=None, repr=False)

    def data(self, client_id: int) -> ClientData:
        """The shard of ``client_id``.

        Raises:
            UnknownClientError: the partition has no such client.
        """
        try:
            return self.shards[client_id]
        except KeyError:
            ids = sorted(self.shards)
            span = f"{ids[0]}..{ids[-1]}" if ids else "none"
            raise UnknownClientError(
                f"client {client_id} does not exist: the recipe's partition has clients "
                f"{span}; name one of those"
            ) from None


class ClientSide(ABC):
    """A picklable description a client builds its ``ClientKit`` from."""

    @abstractmethod
    def open(self) -> ClientKit:
        """Build the kit here (in a worker process, a Flower ClientApp, this process)."""

    @abstractmethod
    def fingerprint(self) -> tuple[object, ...]:
        """Equal for two descriptions that build the same kit (workers are reused)."""

    def keep_dpsgd_noise(  # noqa: B027 (a hook: most client sides need nothing)
        self, noise_multiplier: float, client_noise: dict[int, float] | None
    ) -> None:
        """A resumed run's DP-SGD sigma (``client_noise``: each client's), which a kit built
        from the recipe must train with: the recipe would calibrate it afresh for the
        rounds now planned. Objects of this process were restored with the run; nothing
        to do here."""


class LocalClientSide(ClientSide):
    """Objects that already exist in this process, handed over as they are."""

    def __init__(self, kit: ClientKit) -> None:
        self.kit = kit

    def open(self) -> ClientKit:
        return self.kit

    def fingerprint(self) -> tuple[object, ...]:
        # By identity: a harness that swaps a transform gets workers holding the new one.
        kit = self.kit
        return (id(kit.task), id(kit.shards), *map(id, kit.transforms), id(kit.faults))
