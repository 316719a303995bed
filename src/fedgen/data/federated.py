"""A data set split across clients, plus the pooled train and the test split."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from fedgen.data.client_data import ClientData
from fedgen.data.dataset import ImageDataset
from fedgen.data.partition import Partitioner
from fedgen.data.sources import get_source, load_domains
from fedgen.errors import ConfigError
from fedgen.seeding import numpy_rng


@dataclass(frozen=True)
class FederatedData:
    """Every client's shard of ``train``, the pooled ``train`` itself, and ``test``.

    ``train`` and ``test`` stay on the server side of the simulation (for
    evaluation); clients only ever see their own ``ClientData``.
    """

    clients: list[ClientData]
    train: ImageDataset
    test: ImageDataset

    @property
    def num_clients(self) -> int:
        return len(self.clients)

    def label_counts(self) -> list[list[int]]:
        """``counts[client][class]``: how many examples of each class every client holds."""
        num_classes = self.train.num_classes
        return [torch.bincount(c.data.labels, minlength=num_classes).tolist() for c in self.clients]

    def domain_counts(self) -> list[list[int]] | None:
        """``counts[client][domain]``, or ``None`` when the data has a single source."""
        if self.train.domains is None:
            return None
        num_domains = len(self.train.domain_names)
        counts = []
        for client in self.clients:
            domains = client.data.domains
            if domains is None:
                counts.append([0] * num_domains)
            else:
                counts.append(torch.bincount(domains, minlength=num_domains).tolist())
        return counts

    def to_json(self) -> dict[str, Any]:
        """A JSON-ready summary for the report's heat-map of who holds what."""
        return {
            "num_clients": self.num_clients,
            "class_names": list(self.train.class_names),
            "domain_names": list(self.train.domain_names),
            "counts": self.label_counts(),
            "domain_counts": self.domain_counts(),
            "sizes": [c.num_examples for c in self.clients],
        }


def make_federated_data(
    sources: list[str],
    num_clients: int,
    partitioner: Partitioner,
    seed: int,
    data_dir: Path | str | None = None,
) -> FederatedData:
    """Load ``sources`` and split their train split across ``num_clients`` clients.

    One source is loaded as is; several are concatenated with per-example
    domains (for ``MultiDomainPartitioner``). The split draws from
    ``numpy_rng(seed, "partition")``, so the same seed gives the same clients.
    Raises ``DataMissingError``/``ChecksumError`` from the sources and
    ``ConfigError`` from the partitioner.
    """
    if not sources:
        raise ConfigError("make_federated_data needs at least one source, e.g. ['mnist']")
    if len(sources) == 1:
        source = get_source(sources[0])
        train, test = source.load("train", data_dir), source.load("test", data_dir)
    else:
        train = load_domains(sources, "train", data_dir)
        test = load_domains(sources, "test", data_dir)
    domains = None if train.domains is None else train.domains.numpy()
    parts = partitioner.split(
        train.labels.numpy(), num_clients, numpy_rng(seed, "partition"), domains=domains
    )
    clients = [
        ClientData(client_id=i, data=train.subset(torch.from_numpy(np.asarray(rows))))
        for i, rows in enumerate(parts)
    ]
    return FederatedData(clients=clients, train=train, test=test)
