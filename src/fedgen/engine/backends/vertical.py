"""Vertical backend: the clients of a column-split table train one synthesizer together.

Vertical federation (GTV, Zhao et al., DSN 2025): every client holds some columns of
the same records (``fedgen.data.table_vertical``), so no client can train alone; a
round is ``local_steps`` joint iterations of ``fedgen.tasks.tabular.vertical_training``
(CTGAN) or ``fedgen.tasks.tabular.vertical_tvae_training`` (TVAE),
in which only activations, gradients, drawn conditions and record ids cross, each
counted in encoded ``fedgen.wire`` bytes.

Per round the backend loads the server's parts (the generator body, the critic top:
the global state) and each client's own parts (its head and critic block: its private
state, or the task's initial ones before its first round), trains, stores each
client's parts back in its private state, and yields one ``ClientResult`` per client:
the change of the server's parts as the update (the same for every client: they
trained it together, and FedAvg over equal row counts gives it back), the bytes the
client sent (``bytes_up``) and received (``bytes_down``), and its losses.
Optimizers start fresh every round, so a resumed run is bit-identical.

Every client takes part in every round (a record's columns are needed together);
update transforms and injected faults are refused, since the server's update is not
a client's to compress, clip or corrupt.
"""

from __future__ import annotations

from collections.abc import Iterator

from pydantic import BaseModel, ConfigDict

from fedgen.data.client_data import ClientData
from fedgen.engine.backends.base import Backend, LocalWork
from fedgen.engine.backends.local_training import local_steps_for
from fedgen.engine.backends.signing import sign_result
from fedgen.errors import ConfigError
from fedgen.privacy.noise_key import keyed_seed
from fedgen.registry import BACKENDS
from fedgen.seeding import derive_seed
from fedgen.tasks.tabular.vertical_base import VerticalTableTask
from fedgen.tasks.tabular.vertical_channel import WireChannel, party
from fedgen.tasks.tabular.vertical_ctgan import VerticalCtganTask
from fedgen.tasks.tabular.vertical_training import JointSeeds, VerticalTrainer
from fedgen.tasks.tabular.vertical_tvae_training import VerticalTvaeTrainer
from fedgen.types import ClientResult, RoundPlan, StateDict


def clients_seed(key: bytes | None, first: int) -> int:
    """The seed of the clients' shared draws in a round (record order, which column
    conditions each row, the penalty's mixing weights), ``first`` the round seed of its
    first client.

    The server must not know it, or it could link what it sees (each client's share of
    a layer, row by row) to records. Round seeds are issued by the server from the root
    seed, so the shared seed is keyed by the run's secret key instead (``noise_seed:
    secret``, the default: ``fedgen.privacy.noise_key``), which neither the config nor
    the issued seeds regenerate; a deployment would have the clients agree on such a key
    among themselves. With ``noise_seed: root`` (key None) it derives from ``first``.
    """
    if key is None:
        return derive_seed(first, "vertical", "clients") % 2**63
    return keyed_seed(key, first, "vertical", "clients")


@BACKENDS.register("vertical")
class VerticalBackend(Backend):
    """Joint training of a column-split synthesizer (module docstring).

    Args:
        record: keep every encoded message of the last round in ``channel.log``
            (for tests that search them).
    """

    class Params(BaseModel):
        """The recipe's ``backend.params`` of ``vertical``."""

        model_config = ConfigDict(extra="forbid")

        record: bool = False

    def __init__(self, record: bool = False) -> None:
        self.record = record
        #: The last round's wire (bytes per party, and the messages when recording).
        self.channel = WireChannel(record=record)

    def run(
        self,
        plan: RoundPlan,
        work: LocalWork,
        clients: dict[int, ClientData],
        private_states: dict[int, StateDict],
    ) -> Iterator[ClientResult]:
        task = work.task
        if not isinstance(task, VerticalTableTask):
            raise ConfigError(
                f"backend vertical trains a column-split synthesizer; task "
                f"{type(task).__name__} is not one: use task vertical_ctgan or vertical_tvae"
            )
        ids = sorted(plan.client_ids)
        if ids != list(range(task.num_parties)):
            raise ConfigError(
                f"backend vertical needs every client in every round (clients "
                f"{list(range(task.num_parties))}), but round {plan.round} plans {ids}; "
                "set strategy.params.fraction=1.0"
            )
        if work.transforms or work.faults is not None:
            raise ConfigError(
                "backend vertical: drop transforms and faults; the update is the server's "
                "own body, which no client compresses, clips or corrupts"
            )
        task.load_state(work.global_state)
        initial = task.initial_private_state()
        for c in ids:
            own = private_states.get(c) or {k: initial[k] for k in task.party_keys(c)}
            task.load_state(own)
        seeds = {ins.client_id: ins.seed for ins in plan.instructions}
        first = seeds[ids[0]]
        joint = JointSeeds(
            server=derive_seed(first, "vertical", "server") % 2**63,
            clients=clients_seed(work.noise_key, first),
            own=tuple(derive_seed(seeds[c], "vertical", "own") % 2**63 for c in ids),
        )
        self.channel = WireChannel(record=self.record)
        config = plan.instructions[0].config
        trainer_class = (
            VerticalTrainer if isinstance(task, VerticalCtganTask) else VerticalTvaeTrainer
        )
        trainer = trainer_class(
            task,  # type: ignore[arg-type]
            [clients[c] for c in ids],  # type: ignore[misc]
            joint,
            self.channel,
            float(config.get("lr", task.params.lr)),
        )
        steps = local_steps_for(work, clients[ids[0]].num_examples)
        metrics = trainer.train(steps)
        server = task.federated_state()
        update = {k: server[k] - work.global_state[k] for k in work.global_state}
        state = task.private_state()
        for c in ids:
            private_states[c] = {k: state[k].clone() for k in task.party_keys(c)}
        for ins in plan.instructions:
            c = ins.client_id
            result = ClientResult(
                client_id=c,
                num_examples=clients[c].num_examples,
                update={k: v.clone() for k, v in update.items()},
                metrics={**metrics, "steps": float(steps)},
                bytes_up=self.channel.sent[party(c)],
                bytes_down=self.channel.received[party(c)],
            )
            sign_result(result, work.keys, work.round)
            yield result
