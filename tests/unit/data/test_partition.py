"""Partitioners on the real Fashion-MNIST (and MNIST + Fashion-MNIST) labels."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import numpy as np
import pytest

from fedgen.data import (
    DirichletPartitioner,
    IIDPartitioner,
    MultiDomainPartitioner,
    Partitioner,
    QuantitySkewPartitioner,
    ShardPartitioner,
    load_domains,
)
from fedgen.data.partition import _domain_flow
from fedgen.errors import ConfigError
from fedgen.registry import PARTITIONERS

LABEL_PARTITIONERS = [
    IIDPartitioner(),
    DirichletPartitioner(alpha=0.5),
    ShardPartitioner(classes_per_client=2),
    QuantitySkewPartitioner(alpha=0.5),
]


@pytest.fixture(scope="module")
def mnist_fashion(
    shared_data: Path, require_source: Callable[[str], Path]
) -> tuple[np.ndarray, np.ndarray]:
    """Labels and domains (0 = mnist, 1 = fashion-mnist) of both train splits, 70,000 rows."""
    require_source("mnist")
    require_source("fashion-mnist")
    both = load_domains(["mnist", "fashion-mnist"], "train", shared_data)
    assert both.domains is not None
    return both.labels.numpy(), both.domains.numpy()


def _split(
    partitioner: Partitioner,
    labels: np.ndarray,
    num_clients: int,
    seed: int,
    domains: np.ndarray | None = None,
) -> list[np.ndarray]:
    return partitioner.split(labels, num_clients, np.random.default_rng(seed), domains=domains)


def _assert_partition(parts: list[np.ndarray], n: int, num_clients: int) -> None:
    assert len(parts) == num_clients
    for part in parts:
        assert part.dtype == np.int64
        assert np.all(np.diff(part) > 0)  # sorted, no repeats
    everything = np.concatenate(parts)
    assert len(everything) == n  # disjoint ...
    assert np.array_equal(np.sort(everything), np.arange(n))  # ... and complete


def _same(a: list[np.ndarray], b: list[np.ndarray]) -> bool:
    return all(np.array_equal(x, y) for x, y in zip(a, b, strict=True))


def _max_class_fraction(labels: np.ndarray, parts: list[np.ndarray]) -> float:
    return float(np.mean([np.bincount(labels[p]).max() / len(p) for p in parts]))


@pytest.mark.parametrize("partitioner", LABEL_PARTITIONERS, ids=lambda p: type(p).__name__)
def test_disjoint_complete_reproducible(
    partitioner: Partitioner, fashion_labels: np.ndarray
) -> None:
    parts = _split(partitioner, fashion_labels, 10, seed=0)
    _assert_partition(parts, len(fashion_labels), 10)
    assert _same(parts, _split(partitioner, fashion_labels, 10, seed=0))
    assert not _same(parts, _split(partitioner, fashion_labels, 10, seed=1))


def test_multi_domain_disjoint_complete_reproducible(
    mnist_fashion: tuple[np.ndarray, np.ndarray],
) -> None:
    labels, domains = mnist_fashion
    partitioner = MultiDomainPartitioner(purity=0.9)
    parts = _split(partitioner, labels, 6, seed=0, domains=domains)
    _assert_partition(parts, len(labels), 6)
    assert _same(parts, _split(partitioner, labels, 6, seed=0, domains=domains))
    assert not _same(parts, _split(partitioner, labels, 6, seed=1, domains=domains))


def test_registered_names() -> None:
    assert PARTITIONERS.get("iid") is IIDPartitioner
    assert PARTITIONERS.get("dirichlet") is DirichletPartitioner
    assert PARTITIONERS.get("shards") is ShardPartitioner
    assert PARTITIONERS.get("quantity") is QuantitySkewPartitioner
    assert PARTITIONERS.get("multi_domain") is MultiDomainPartitioner


def test_iid_sizes_and_label_mix(fashion_labels: np.ndarray) -> None:
    parts = _split(IIDPartitioner(), fashion_labels, 7, seed=0)
    assert {len(p) for p in parts} <= {60_000 // 7, 60_000 // 7 + 1}
    assert _max_class_fraction(fashion_labels, parts) < 0.12


def test_dirichlet_small_alpha_concentrates_labels(fashion_labels: np.ndarray) -> None:
    skewed = _split(DirichletPartitioner(alpha=0.1), fashion_labels, 10, seed=0)
    near_iid = _split(DirichletPartitioner(alpha=100.0), fashion_labels, 10, seed=0)
    assert _max_class_fraction(fashion_labels, skewed) > 0.4
    assert _max_class_fraction(fashion_labels, near_iid) < 0.15
    assert min(len(p) for p in skewed) >= 10


def test_dirichlet_gives_up_with_clear_error() -> None:
    labels = np.repeat(np.arange(10), 100)
    with pytest.raises(ConfigError, match="raise alpha, lower min_size"):
        _split(DirichletPartitioner(alpha=0.01, min_size=40, max_tries=5), labels, 20, seed=0)


@pytest.mark.parametrize(("num_clients", "k"), [(10, 1), (10, 2), (100, 2), (30, 3), (7, 10)])
def test_shards_give_exact_classes_per_client(
    fashion_labels: np.ndarray, num_clients: int, k: int
) -> None:
    parts = _split(ShardPartitioner(classes_per_client=k), fashion_labels, num_clients, seed=0)
    _assert_partition(parts, len(fashion_labels), num_clients)
    assert [len(np.unique(fashion_labels[p])) for p in parts] == [k] * num_clients


def test_shards_vary_class_pairs_across_clients(fashion_labels: np.ndarray) -> None:
    # 100 clients x 2 classes: random shard owners give many of the 45 possible pairs.
    parts = _split(ShardPartitioner(classes_per_client=2), fashion_labels, 100, seed=0)
    pairs = {tuple(np.unique(fashion_labels[p])) for p in parts}
    assert len(pairs) >= 30
    assert {len(p) for p in parts} == {600}  # McMahan et al.: equal shards on balanced data


def test_shards_on_unbalanced_labels() -> None:
    labels = np.concatenate([np.zeros(500, np.int64), np.ones(30, np.int64), np.full(5, 2)])
    parts = _split(ShardPartitioner(classes_per_client=2), labels, 6, seed=3)
    _assert_partition(parts, len(labels), 6)
    assert all(len(np.unique(labels[p])) == 2 for p in parts)


def test_quantity_skew_sizes_unequal_labels_iid(fashion_labels: np.ndarray) -> None:
    parts = _split(QuantitySkewPartitioner(alpha=0.5), fashion_labels, 10, seed=0)
    sizes = sorted(len(p) for p in parts)
    assert sizes[-1] > 4 * sizes[0]
    big = [p for p in parts if len(p) > 2000]
    assert _max_class_fraction(fashion_labels, big) < 0.13


def test_quantity_skew_respects_min_size() -> None:
    labels = np.zeros(1000, np.int64)
    parts = _split(QuantitySkewPartitioner(alpha=0.05, min_size=20), labels, 30, seed=0)
    assert min(len(p) for p in parts) >= 20


def test_multi_domain_purity(mnist_fashion: tuple[np.ndarray, np.ndarray]) -> None:
    labels, domains = mnist_fashion
    parts = _split(MultiDomainPartitioner(purity=0.9), labels, 6, seed=0, domains=domains)
    for client, part in enumerate(parts):
        home = client % 2  # round-robin: 0 = mnist, 1 = fashion-mnist
        assert np.mean(domains[part] == home) == pytest.approx(0.9, abs=0.01)
    # Labels are iid within each domain, so no client is label-skewed.
    assert _max_class_fraction(labels, parts) < 0.15


def test_multi_domain_flow_hand_computed() -> None:
    # Sizes 10k (mnist) and 60k (fashion), purity 0.9: group totals g solve
    # 0.9 g0 + 0.1 g1 = 10000 and 0.1 g0 + 0.9 g1 = 60000, so g = (3750, 66250).
    flow = _domain_flow(np.array([10_000, 60_000]), purity=0.9)
    assert flow is not None
    assert flow.tolist() == [[3375, 6625], [375, 59625]]


def test_multi_domain_infeasible_purity_names_the_lowest(
    mnist_fashion: tuple[np.ndarray, np.ndarray],
) -> None:
    labels, domains = mnist_fashion
    # The lowest feasible purity is 1 / (1 + 10000/60000) = 0.857...
    with pytest.raises(ConfigError, match=r"purity >= 0\.858"):
        _split(MultiDomainPartitioner(purity=0.6), labels, 4, seed=0, domains=domains)


def test_multi_domain_too_few_examples_for_a_domains_clients() -> None:
    # Prepare: domain 1 holds 10 examples; 22 clients give it 11 (purity 1: no mixing).
    labels = np.arange(1010) % 10
    domains = np.repeat([0, 1], [1000, 10])
    partitioner = MultiDomainPartitioner(purity=1.0)
    # Execute / Assert
    with pytest.raises(ConfigError, match=r"domain 1 has 10 examples.*11 clients.*at most 21"):
        _split(partitioner, labels, 22, seed=0, domains=domains)
    parts = _split(partitioner, labels, 21, seed=0, domains=domains)
    _assert_partition(parts, len(labels), 21)
    assert min(len(p) for p in parts) == 1


def test_multi_domain_errors() -> None:
    labels = np.zeros(100, np.int64)
    domains = np.repeat(np.arange(4), 25)
    with pytest.raises(ConfigError, match="domain"):
        _split(MultiDomainPartitioner(), labels, 4, seed=0)
    with pytest.raises(ConfigError, match="4 domains but 3 clients"):
        _split(MultiDomainPartitioner(), labels, 3, seed=0, domains=domains)
    with pytest.raises(ConfigError, match="single domain"):
        _split(MultiDomainPartitioner(), labels, 3, seed=0, domains=np.zeros(100, np.int64))
    with pytest.raises(ConfigError, match="must exceed 1/4"):
        _split(MultiDomainPartitioner(purity=0.2), labels, 4, seed=0, domains=domains)


@pytest.mark.parametrize(
    "make",
    [
        lambda: DirichletPartitioner(alpha=0.0),
        lambda: DirichletPartitioner(alpha=-1.0),
        lambda: DirichletPartitioner(alpha=float("nan")),
        lambda: QuantitySkewPartitioner(alpha=0.0),
        lambda: ShardPartitioner(classes_per_client=0),
        lambda: MultiDomainPartitioner(purity=1.5),
    ],
)
def test_bad_parameters_are_config_errors(make: Callable[[], Partitioner]) -> None:
    with pytest.raises(ConfigError):
        make()


def test_bad_split_requests_are_config_errors() -> None:
    labels = np.repeat(np.arange(10), 5)
    with pytest.raises(ConfigError, match="at most 50 clients"):
        _split(IIDPartitioner(), labels, 51, seed=0)
    with pytest.raises(ConfigError, match="at least 1 client"):
        _split(IIDPartitioner(), labels, 0, seed=0)
    with pytest.raises(ConfigError, match="at most 10"):
        _split(ShardPartitioner(classes_per_client=11), labels, 5, seed=0)
    with pytest.raises(ConfigError, match="cannot hold all 10 classes"):
        _split(ShardPartitioner(classes_per_client=2), labels, 4, seed=0)
    with pytest.raises(ConfigError, match="lower min_size"):
        _split(DirichletPartitioner(alpha=1.0, min_size=10), labels, 6, seed=0)
    with pytest.raises(ConfigError, match="1-D integer"):
        _split(IIDPartitioner(), labels.astype(np.float32), 2, seed=0)


def test_one_example_per_client() -> None:
    labels = np.arange(5) % 2
    parts = _split(IIDPartitioner(), labels, 5, seed=0)
    _assert_partition(parts, 5, 5)
    assert [len(p) for p in parts] == [1] * 5


@pytest.mark.parametrize("kind", ["dirichlet", "quantity"])
def test_a_partition_that_allows_empty_clients_is_refused_by_name(kind):
    # A client without data fails every round it is sampled in: refused before loading.
    from fedgen.params import validate_params

    with pytest.raises(ConfigError, match=r"data.partition.params.*min_size"):
        validate_params(
            PARTITIONERS.get(kind), {"alpha": 0.1, "min_size": 0}, "data.partition.params"
        )
