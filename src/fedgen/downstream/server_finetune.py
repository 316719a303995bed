"""The server fine-tunes the global classifier on synthetic data after every round.

The aggregate of clients that each saw a few classes drifts toward their classes; a few
server steps on a class-balanced synthetic set from the federated generator pull it
back (the server-side use of a generator in FedFTG, Zhang et al. 2022, and the
"server fine-tunes" arm of issue 18). No client data is read: the server holds only the
generator's samples, so this costs no bytes on the wire.
"""

from __future__ import annotations

from fedgen.data.client_data import ClientData
from fedgen.data.dataset import ImageDataset
from fedgen.engine.federation import Callback, Federation, RoundRecord
from fedgen.seeding import torch_generator
from fedgen.tasks.classifier import ClassifierTask


class ServerFineTune(Callback):
    """After each round: load the global classifier, take ``steps`` steps on
    ``synthetic``, and make the result the next round's global state."""

    def __init__(self, synthetic: ImageDataset, steps: int, seed: int) -> None:
        # Client id -1: the server's own shard, never one of the clients'.
        self.data = ClientData(-1, synthetic)
        self.steps = steps
        self.seed = seed

    def on_round_end(self, fed: Federation, record: RoundRecord) -> None:
        if self.steps == 0:
            return
        task = fed.task
        if not isinstance(task, ClassifierTask):
            raise TypeError(f"ServerFineTune fine-tunes a ClassifierTask, not {type(task)}")
        task.load_state(fed.global_state)
        generator = torch_generator(self.seed, "server-finetune", record.round)
        losses = task.train_local(self.data, self.steps, generator, {})
        fed.global_state = task.federated_state()
        record.metrics["server_finetune/loss"] = losses["loss/cross_entropy"]
