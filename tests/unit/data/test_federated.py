"""make_federated_data on real sources: clients, counts, JSON summary."""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pytest
import torch

from fedgen.data import (
    DirichletPartitioner,
    IIDPartitioner,
    MultiDomainPartitioner,
    make_federated_data,
)
from fedgen.errors import ConfigError
from fedgen.seeding import numpy_rng


def test_single_source_clients_cover_train(
    shared_data: Path, require_source: Callable[[str], Path]
) -> None:
    # Prepare
    require_source("fashion-mnist")
    partitioner = DirichletPartitioner(alpha=0.3)
    # Execute
    fed = make_federated_data(["fashion-mnist"], 8, partitioner, seed=5, data_dir=shared_data)
    # Assert
    assert fed.num_clients == 8
    assert [c.client_id for c in fed.clients] == list(range(8))
    assert len(fed.train) == 60_000 and len(fed.test) == 10_000
    counts = np.array(fed.label_counts())
    assert counts.shape == (8, 10)
    assert counts.sum(axis=0).tolist() == [6000] * 10
    for client, row in zip(fed.clients, counts, strict=True):
        assert row.tolist() == torch.bincount(client.data.labels, minlength=10).tolist()
    # The clients hold exactly the rows the partitioner chose with the derived rng.
    rows = partitioner.split(fed.train.labels.numpy(), 8, numpy_rng(5, "partition"))
    assert torch.equal(fed.clients[3].data.images, fed.train.images[torch.from_numpy(rows[3])])


def test_same_seed_same_clients(shared_data: Path, require_source: Callable[[str], Path]) -> None:
    require_source("kmnist")
    make = lambda seed: make_federated_data(  # noqa: E731
        ["kmnist"], 5, DirichletPartitioner(alpha=0.5), seed=seed, data_dir=shared_data
    )
    assert make(1).label_counts() == make(1).label_counts()
    assert make(1).label_counts() != make(2).label_counts()


def test_to_json_single_source(shared_data: Path, require_source: Callable[[str], Path]) -> None:
    require_source("kmnist")
    fed = make_federated_data(["kmnist"], 4, IIDPartitioner(), seed=0, data_dir=shared_data)
    summary = json.loads(json.dumps(fed.to_json()))
    assert summary["num_clients"] == 4
    assert summary["class_names"][0] == "o"
    assert summary["domain_names"] == []
    assert summary["domain_counts"] is None
    assert summary["sizes"] == [2000] * 4
    assert [sum(row) for row in summary["counts"]] == summary["sizes"]


def test_several_sources_have_domain_counts(
    shared_data: Path, require_source: Callable[[str], Path]
) -> None:
    require_source("mnist")
    require_source("kmnist")
    fed = make_federated_data(
        ["mnist", "kmnist"], 4, MultiDomainPartitioner(purity=0.9), seed=0, data_dir=shared_data
    )
    assert len(fed.train) == 18_000 and len(fed.test) == 12_000
    summary = fed.to_json()
    assert summary["domain_names"] == ["mnist", "kmnist"]
    domain_counts = np.array(summary["domain_counts"])
    assert domain_counts.sum(axis=0).tolist() == [10_000, 8000]
    for client, row in enumerate(domain_counts):
        assert row[client % 2] / row.sum() == pytest.approx(0.9, abs=0.01)


def test_no_sources_is_config_error() -> None:
    with pytest.raises(ConfigError, match="at least one source"):
        make_federated_data([], 2, IIDPartitioner(), seed=0)
