"""The Flower apps of ``benchmarks/flower_simulation.py``: fedgen's task trained by
Flower's simulation runtime, on the same shards and steps as fedgen's own backends.

Each Ray actor builds the recipe's federation once (task, partition) and keeps it, as
fedgen's process-pool workers do; a ClientApp call loads the global weights, runs the
task's own ``train_local`` for the recipe's local steps on its partition's shard and
replies with its weights and example count. Flower's ``FedAvg`` aggregates them. The
recipe arrives as JSON in ``FEDGEN_SIM_RECIPE``; the server writes a timestamp before
round 1 and after every round to ``FEDGEN_SIM_TIMES`` (one float a line).
"""

from __future__ import annotations

import json
import math
import os
import time
from typing import Any

import torch
from flwr.app import ArrayRecord, Context, Message, MetricRecord, RecordDict
from flwr.clientapp import ClientApp
from flwr.serverapp import Grid, ServerApp
from flwr.serverapp.strategy import FedAvg

from fedgen.config import parse_config
from fedgen.experiment import build_experiment
from fedgen.seeding import derive_seed

#: The recipe's federation, built once per process (a Ray actor serves many clients).
_BUILT: dict[str, Any] = {}


def federation() -> Any:
    """The recipe's ``Federation`` (task, shards), built on first use in this process."""
    recipe = os.environ["FEDGEN_SIM_RECIPE"]
    if recipe not in _BUILT:
        cfg = parse_config(json.loads(recipe))
        _BUILT.clear()
        _BUILT[recipe] = build_experiment(cfg).federation
    return _BUILT[recipe]


client = ClientApp()


@client.train()
def train(msg: Message, context: Context) -> Message:
    """One client's round: fedgen's ``train_local`` from the global weights."""
    fed = federation()
    cid = int(context.node_config["partition-id"])
    round_ = int(msg.content["config"]["server-round"])
    task = fed.task
    task.load_state(msg.content["arrays"].to_torch_state_dict())
    data = fed.clients[cid]
    gen = torch.Generator().manual_seed(derive_seed(fed.seed, "flower-sim", round_, cid))
    steps = fed.local_steps or max(
        1, math.ceil(fed.local_epochs * data.num_examples / task.params.batch_size)
    )  # fedgen's local_steps_for: fixed steps, or passes over the shard
    metrics = task.train_local(data, steps, gen, {})
    reply = RecordDict(
        {
            "arrays": ArrayRecord(task.federated_state()),
            "metrics": MetricRecord(
                {"num-examples": data.num_examples, **{k: float(v) for k, v in metrics.items()}}
            ),
        }
    )
    return Message(reply, reply_to=msg)


server = ServerApp()


@server.main()
def main(grid: Grid, context: Context) -> None:
    """Flower's FedAvg over the recipe's cohort size, rounds timed by ``evaluate_fn``."""
    fed = federation()
    n = len(fed.clients)
    fraction = float(os.environ["FEDGEN_SIM_FRACTION"])
    cohort = max(1, round(fraction * n))
    stamps: list[float] = []

    def stamp(server_round: int, arrays: ArrayRecord) -> MetricRecord | None:
        stamps.append(time.perf_counter())
        return None

    strategy = FedAvg(
        fraction_train=cohort / n,
        fraction_evaluate=0.0,
        min_train_nodes=cohort,
        min_available_nodes=n,
    )
    strategy.start(
        grid,
        ArrayRecord(fed.task.federated_state()),
        num_rounds=int(os.environ["FEDGEN_SIM_ROUNDS"]),
        evaluate_fn=stamp,
    )
    with open(os.environ["FEDGEN_SIM_TIMES"], "w") as out:
        out.write("\n".join(f"{t:.6f}" for t in stamps))
