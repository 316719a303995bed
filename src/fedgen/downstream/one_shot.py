"""One-shot federation with conditional generators (FedCVAE-Ens, Heinbaugh et al., ICLR 2023).

Each client trains a conditional generator on its own shard alone and sends it once,
with its label counts; the server draws a synthetic data set from all of them, each
client's share and label mix following the counts it reported, and trains the global
classifier on that set. One upload per client and no download (each client builds its
initial weights from the shared recipe and seed): the bytes are the length of each
client's message as ``fedgen.wire`` encodes it. FedCVAE-Ens sends the cVAE's decoder;
the cGAN sends its generator. The clients train without DP here. The same set
(``ensemble_set``) also serves the ``one_shot_finetune`` arm, where the server fine-tunes
a classifier federated on real data with it after every round.
"""

from __future__ import annotations

import time
from dataclasses import dataclass

import torch

from fedgen.data.client_data import ClientData
from fedgen.data.dataset import ImageDataset
from fedgen.downstream.accuracy import class_accuracy
from fedgen.downstream.classifier_federation import ArmResult
from fedgen.downstream.synthetic import synthesize
from fedgen.eval.classifier import train_classifier
from fedgen.modality import DataSpec, Modality
from fedgen.registry import TASKS
from fedgen.seeding import derive_seed, torch_generator
from fedgen.tasks.base import Task
from fedgen.wire import Message, decode, encode

#: The module a client sends: what samples, not what was needed only to train it.
SENT_MODULE = {"cvae": "decoder", "cgan": "generator"}


def client_message(task: Task, module: str, client_id: int, counts: list[int]) -> bytes:
    """The one message a client sends: ``module``'s tensors and its label counts."""
    arrays = {
        f"{module}.{k}": v.detach().contiguous()
        for k, v in task.modules[module].state_dict().items()
    }
    return encode(Message(arrays=arrays, meta={"client": client_id, "label_counts": counts}))


def allocate(counts: list[list[int]], total: int) -> list[list[int]]:
    """Samples per client and class: ``total`` split in proportion to every reported
    count (largest remainders, so the parts add up to ``total`` exactly)."""
    flat = [(k, c, n) for k, row in enumerate(counts) for c, n in enumerate(row)]
    mass = sum(n for _, _, n in flat)
    if mass == 0:
        raise ValueError("the clients reported no examples; nothing to sample from")
    exact = [(k, c, total * n / mass) for k, c, n in flat]
    out = [[0] * len(row) for row in counts]
    for k, c, x in exact:
        out[k][c] = int(x)
    left = total - sum(map(sum, out))
    by_remainder = sorted(exact, key=lambda t: t[2] - int(t[2]), reverse=True)
    for k, c, _ in by_remainder[:left]:
        out[k][c] += 1
    return out


@dataclass
class EnsembleSet:
    """The server's synthetic set from the clients' one-shot generators, and its cost."""

    data: ImageDataset
    #: Every client's one message, as ``fedgen.wire`` encodes it.
    bytes_up: int
    seconds: float
    task_name: str
    steps: int


def ensemble_set(
    clients: list[ClientData],
    test: ImageDataset,
    *,
    task_name: str,
    steps: int,
    samples: int,
    seed: int,
    batch_size: int = 64,
) -> EnsembleSet:
    """Train one generator per client, send each once, and draw ``samples`` images from
    them by the label counts each client reported."""
    if task_name not in SENT_MODULE:
        raise ValueError(f"one-shot generators are {sorted(SENT_MODULE)}, not {task_name!r}")
    cls: type[Task] = TASKS.get(task_name)
    spec = DataSpec(Modality.IMAGES, num_classes=test.num_classes, image_shape=(1, 28, 28))
    module = SENT_MODULE[task_name]
    t0 = time.perf_counter()
    messages: list[bytes] = []
    for client in clients:
        # Every client starts from the same seeded weights, as the shared recipe gives them.
        task = cls.from_spec(
            cls.Params(batch_size=batch_size), spec, derive_seed(seed, "one-shot", "init")
        )
        gen = torch_generator(seed, "one-shot", "client", client.client_id)
        task.train_local(client, steps, gen, {})
        counts = torch.bincount(client.data.labels, minlength=test.num_classes).tolist()
        messages.append(client_message(task, module, client.client_id, counts))
    # The server: decode every message and draw each client's share.
    server = cls.from_spec(cls.Params(), spec, derive_seed(seed, "one-shot", "init"))
    received = [decode(m) for m in messages]
    shares = allocate([list(m.meta["label_counts"]) for m in received], samples)
    parts = []
    for message, share in zip(received, shares, strict=True):
        server.load_state(dict(message.arrays))
        gen = torch_generator(seed, "one-shot", "server", int(message.meta["client"]))
        parts.append(synthesize(server, share, test.class_names, gen))
    data = ImageDataset(
        name=f"one-shot {task_name} ensemble",
        images=torch.cat([p.images for p in parts]),
        labels=torch.cat([p.labels for p in parts]),
        class_names=test.class_names,
    )
    return EnsembleSet(
        data=data,
        bytes_up=sum(len(m) for m in messages),
        seconds=time.perf_counter() - t0,
        task_name=task_name,
        steps=steps,
    )


def one_shot_federation(
    ensemble: EnsembleSet, test: ImageDataset, *, epochs: int, seed: int
) -> ArmResult:
    """The server trains the global classifier on the ensemble's samples alone."""
    t0 = time.perf_counter()
    model = train_classifier(
        ensemble.data.float_images(),
        ensemble.data.labels,
        test.num_classes,
        epochs=epochs,
        seed=derive_seed(seed, "one-shot", "clf"),
    )
    module = SENT_MODULE[ensemble.task_name]
    return ArmResult(
        name=f"one_shot_{ensemble.task_name}",
        accuracy=class_accuracy(model, test),
        rounds=1,
        bytes_up=ensemble.bytes_up,
        bytes_down=0,
        seconds=ensemble.seconds + time.perf_counter() - t0,
        model=model,
        synthetic_examples=len(ensemble.data),
        notes=[
            f"each client trains a {ensemble.task_name} alone for {ensemble.steps} steps and "
            f"sends its {module} once; no download (initial weights from the shared seed)"
        ],
    )
