"""Partitioners: split a labelled data set across clients, iid or skewed.

Every partitioner returns one sorted ``int64`` index array per client; the
arrays are disjoint and together cover every example exactly once, and the
same ``rng`` seed gives the same split.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from dataclasses import dataclass

import numpy as np
from pydantic import BaseModel, ConfigDict, Field

from fedgen.errors import ConfigError
from fedgen.registry import PARTITIONERS


class Partitioner(ABC):
    """Splits example indices across ``num_clients`` clients."""

    def split(
        self,
        labels: np.ndarray,
        num_clients: int,
        rng: np.random.Generator,
        domains: np.ndarray | None = None,
    ) -> list[np.ndarray]:
        """Per-client sorted ``int64`` index arrays: disjoint, covering ``range(len(labels))``.

        ``domains`` (same length as ``labels``) says which source each example
        came from; only domain-aware partitioners use it. Raises ``ConfigError``
        when the parameters cannot give every client a valid share.
        """
        labels = np.asarray(labels)
        if labels.ndim != 1 or not np.issubdtype(labels.dtype, np.integer):
            raise ConfigError(
                f"labels must be a 1-D integer array, got {labels.dtype} of shape {labels.shape}"
            )
        if domains is not None:
            domains = np.asarray(domains)
            if domains.shape != labels.shape:
                raise ConfigError(
                    f"domains has shape {domains.shape} but labels has "
                    f"{labels.shape}; give one domain per example"
                )
        if isinstance(num_clients, bool) or not isinstance(num_clients, int | np.integer):
            raise ConfigError(f"num_clients must be an integer, got {num_clients!r}")
        if num_clients < 1:
            raise ConfigError(f"num_clients is {num_clients}; use at least 1 client")
        if num_clients > len(labels):
            raise ConfigError(
                f"{num_clients} clients but only {len(labels)} examples; use at "
                f"most {len(labels)} clients or more data"
            )
        parts = self._split(labels, int(num_clients), rng, domains)
        return [np.sort(np.asarray(part, dtype=np.int64)) for part in parts]

    @abstractmethod
    def _split(
        self,
        labels: np.ndarray,
        num_clients: int,
        rng: np.random.Generator,
        domains: np.ndarray | None,
    ) -> list[np.ndarray]:
        """The partition itself; inputs are already checked."""


def _check_alpha(alpha: float, name: str) -> None:
    if not alpha > 0 or not np.isfinite(alpha):
        raise ConfigError(
            f"{name} alpha is {alpha}; use a finite alpha > 0 (small = skewed, "
            "e.g. 0.1; large = near iid, e.g. 100)"
        )


def _check_min_size(min_size: int, name: str) -> None:
    if min_size < 0:
        raise ConfigError(f"{name} min_size is {min_size}; use 0 or more")


def _check_enough_examples(min_size: int, num_clients: int, available: int, name: str) -> None:
    if min_size * num_clients > available:
        raise ConfigError(
            f"{name} min_size={min_size} for {num_clients} clients needs "
            f"{min_size * num_clients} examples but there are {available}; lower min_size "
            "or use fewer clients"
        )


@PARTITIONERS.register("iid")
@dataclass(frozen=True)
class IIDPartitioner(Partitioner):
    """Uniformly random, equal-size shares (sizes differ by at most one).

    The iid baseline of McMahan et al. 2017, "Communication-Efficient Learning
    of Deep Networks from Decentralized Data" (AISTATS).
    """

    class Params(BaseModel):
        """``data.partition.params`` of ``iid``: none."""

        model_config = ConfigDict(extra="forbid")

    def _split(
        self,
        labels: np.ndarray,
        num_clients: int,
        rng: np.random.Generator,
        domains: np.ndarray | None,
    ) -> list[np.ndarray]:
        return np.array_split(rng.permutation(len(labels)), num_clients)


@PARTITIONERS.register("dirichlet")
@dataclass(frozen=True)
class DirichletPartitioner(Partitioner):
    """Label skew: each class is spread over clients by proportions drawn from Dirichlet(alpha).

    Hsu, Qi and Brown 2019, "Measuring the Effects of Non-Identical Data
    Distribution for Federated Visual Classification"; the same scheme as
    Flower Datasets' ``DirichletPartitioner``. Small ``alpha`` (0.1) gives
    clients few dominant classes; large ``alpha`` (100) approaches iid. The
    whole draw is repeated until every client holds at least ``min_size``
    examples, at most ``max_tries`` times.
    """

    class Params(BaseModel):
        """``data.partition.params`` of ``dirichlet``."""

        model_config = ConfigDict(extra="forbid")

        alpha: float = Field(gt=0, allow_inf_nan=False)
        #: The fewest examples any client may hold (at least 1: a client without data
        #: would fail every round it is sampled in).
        min_size: int = Field(10, ge=1)
        #: Draws of the whole split before giving up.
        max_tries: int = Field(100, ge=1)

    alpha: float
    min_size: int = 10
    max_tries: int = 100

    def __post_init__(self) -> None:
        _check_alpha(self.alpha, "dirichlet")
        _check_min_size(self.min_size, "dirichlet")
        if self.max_tries < 1:
            raise ConfigError(f"dirichlet max_tries is {self.max_tries}; use 1 or more")

    def _split(
        self,
        labels: np.ndarray,
        num_clients: int,
        rng: np.random.Generator,
        domains: np.ndarray | None,
    ) -> list[np.ndarray]:
        _check_enough_examples(self.min_size, num_clients, len(labels), "dirichlet")
        by_class = [np.flatnonzero(labels == c) for c in np.unique(labels)]
        smallest = 0
        for _ in range(self.max_tries):
            chunks: list[list[np.ndarray]] = [[] for _ in range(num_clients)]
            for rows in by_class:
                shares = rng.dirichlet(np.full(num_clients, self.alpha))
                cuts = (np.cumsum(shares)[:-1] * len(rows)).astype(np.int64)
                for client, chunk in enumerate(np.split(rng.permutation(rows), cuts)):
                    chunks[client].append(chunk)
            parts = [np.concatenate(c) for c in chunks]
            smallest = min(len(p) for p in parts)
            if smallest >= self.min_size:
                return parts
        raise ConfigError(
            f"dirichlet alpha={self.alpha} left some client with fewer than "
            f"min_size={self.min_size} examples in all {self.max_tries} draws (last smallest: "
            f"{smallest}); raise alpha, lower min_size, or use fewer clients"
        )


@PARTITIONERS.register("shards")
@dataclass(frozen=True)
class ShardPartitioner(Partitioner):
    """Pathological label skew: every client holds exactly ``classes_per_client`` classes.

    McMahan et al. 2017, "Communication-Efficient Learning of Deep Networks
    from Decentralized Data" (AISTATS): sort by label, cut into shards, give
    each client ``classes_per_client`` shards (2 in the paper). Here each class
    is cut into shards in proportion to its size (at most one shard per client
    per class) and shards are dealt so that no client gets two of one class:
    the class count per client is exact, not only expected.
    """

    class Params(BaseModel):
        """``data.partition.params`` of ``shards``."""

        model_config = ConfigDict(extra="forbid")

        classes_per_client: int = Field(2, ge=1)

    classes_per_client: int = 2

    def __post_init__(self) -> None:
        if self.classes_per_client < 1:
            raise ConfigError(
                f"shards classes_per_client is {self.classes_per_client}; use at least 1"
            )

    def _split(
        self,
        labels: np.ndarray,
        num_clients: int,
        rng: np.random.Generator,
        domains: np.ndarray | None,
    ) -> list[np.ndarray]:
        classes = np.unique(labels)
        k = self.classes_per_client
        if k > len(classes):
            raise ConfigError(
                f"shards classes_per_client={k} but the data has only "
                f"{len(classes)} classes; use at most {len(classes)}"
            )
        if num_clients * k < len(classes):
            raise ConfigError(
                f"{num_clients} clients x {k} classes each cannot hold all "
                f"{len(classes)} classes; raise classes_per_client or num_clients"
            )
        rows_by_class = [rng.permutation(np.flatnonzero(labels == c)) for c in classes]
        sizes = np.array([len(r) for r in rows_by_class])
        shard_counts = _shards_per_class(sizes, num_clients, k)

        # Deal the shards class by class, round-robin over clients: a class has
        # at most num_clients shards, so its shards land on distinct clients.
        order = rng.permutation(len(classes))
        shard_rows: list[np.ndarray] = []
        shard_class: list[int] = []
        for c in order:
            for piece in np.array_split(rows_by_class[c], shard_counts[c]):
                shard_rows.append(piece)
                shard_class.append(int(c))
        owner = np.arange(len(shard_rows)) % num_clients
        _mix_shards(owner, np.array(shard_class), len(classes), rng)
        return [
            np.concatenate([shard_rows[s] for s in np.flatnonzero(owner == client)])
            for client in range(num_clients)
        ]


def _shards_per_class(sizes: np.ndarray, num_clients: int, k: int) -> np.ndarray:
    """Shards per class: about proportional to class size, each in [1, min(num_clients, size)]."""
    total = num_clients * k
    caps = np.minimum(num_clients, sizes)
    if caps.sum() < total:
        raise ConfigError(
            f"{num_clients} clients x {k} classes each need {total} shards, "
            f"but the classes (sizes {sizes.tolist()}) allow only {caps.sum()}; "
            "lower classes_per_client or num_clients"
        )
    target = total * sizes / sizes.sum()
    counts = np.clip(np.floor(target).astype(np.int64), 1, caps)
    while counts.sum() > total:  # the floor of 1 per class can overshoot
        excess = np.where(counts > 1, counts - target, -np.inf)
        counts[np.argmax(excess)] -= 1
    while counts.sum() < total:
        deficit = np.where(counts < caps, target - counts, -np.inf)
        counts[np.argmax(deficit)] += 1
    return counts


def _mix_shards(
    owner: np.ndarray, shard_class: np.ndarray, num_classes: int, rng: np.random.Generator
) -> None:
    """Randomly swap shard owners (in place), never giving a client two shards of one class.

    Round-robin dealing alone gives many clients the same class pair; random
    swaps make the pairs as varied as McMahan et al.'s random shard assignment.
    """
    num_clients = int(owner.max()) + 1
    has = np.zeros((num_clients, num_classes), dtype=bool)
    has[owner, shard_class] = True
    n = len(owner)
    for a, b in rng.integers(n, size=(min(20 * n, 200_000), 2)):
        ca, cb, ka, kb = owner[a], owner[b], shard_class[a], shard_class[b]
        if ca == cb or ka == kb or has[ca, kb] or has[cb, ka]:
            continue
        has[ca, ka] = has[cb, kb] = False
        has[ca, kb] = has[cb, ka] = True
        owner[a], owner[b] = cb, ca


@PARTITIONERS.register("quantity")
@dataclass(frozen=True)
class QuantitySkewPartitioner(Partitioner):
    """Quantity skew: client sizes follow Dirichlet(alpha) proportions; labels stay iid.

    Li, Diao, Chen and He 2022, "Federated Learning on Non-IID Data Silos: An
    Experimental Study" (ICDE). Every client first gets ``min_size`` examples;
    the rest are shared by a multinomial draw with the Dirichlet proportions.
    """

    class Params(BaseModel):
        """``data.partition.params`` of ``quantity``."""

        model_config = ConfigDict(extra="forbid")

        alpha: float = Field(gt=0, allow_inf_nan=False)
        #: Examples every client gets before the Dirichlet draw shares the rest (at
        #: least 1: a client without data would fail every round it is sampled in).
        min_size: int = Field(1, ge=1)

    alpha: float
    min_size: int = 1

    def __post_init__(self) -> None:
        _check_alpha(self.alpha, "quantity")
        _check_min_size(self.min_size, "quantity")

    def _split(
        self,
        labels: np.ndarray,
        num_clients: int,
        rng: np.random.Generator,
        domains: np.ndarray | None,
    ) -> list[np.ndarray]:
        _check_enough_examples(self.min_size, num_clients, len(labels), "quantity")
        spare = len(labels) - self.min_size * num_clients
        shares = rng.dirichlet(np.full(num_clients, self.alpha))
        sizes = self.min_size + rng.multinomial(spare, shares)
        return np.split(rng.permutation(len(labels)), np.cumsum(sizes)[:-1])


@PARTITIONERS.register("multi_domain")
@dataclass(frozen=True)
class MultiDomainPartitioner(Partitioner):
    """Feature skew: each client mostly holds one domain (source), as in FedBN.

    Li et al. 2021, "FedBN: Federated Learning on Non-IID Features via Local
    Batch Normalization" (ICLR): clients differ by domain (MNIST, SVHN, ...).
    Client ``i`` belongs to domain ``i % D`` (round-robin, domains in sorted
    order). A fraction ``purity`` of every client's data comes from its own
    domain; the rest comes equally from each other domain, labels iid.

    Because every example must go to some client, the group sizes follow from
    the domain sizes: with a small and a large domain, the small domain's
    clients are smaller. Purities so low that the smallest domain cannot
    supply the others' share are rejected with the lowest feasible purity.
    """

    class Params(BaseModel):
        """``data.partition.params`` of ``multi_domain``."""

        model_config = ConfigDict(extra="forbid")

        #: The share of each client's data from its own domain.
        purity: float = Field(0.9, gt=0, le=1)

    purity: float = 0.9

    def __post_init__(self) -> None:
        if not 0 < self.purity <= 1:
            raise ConfigError(
                f"multi_domain purity is {self.purity}; use a value in (0, 1], "
                "e.g. 0.9 (90% of each client's data from its own domain)"
            )

    def _split(
        self,
        labels: np.ndarray,
        num_clients: int,
        rng: np.random.Generator,
        domains: np.ndarray | None,
    ) -> list[np.ndarray]:
        if domains is None:
            raise ConfigError(
                "multi_domain needs each example's domain; list several sources "
                "(e.g. sources: [mnist, fashion-mnist]) or use another partitioner"
            )
        domain_ids, domain_sizes = np.unique(domains, return_counts=True)
        num_domains = len(domain_ids)
        if num_domains < 2:
            raise ConfigError(
                "multi_domain got a single domain; list several sources or use the iid partitioner"
            )
        if num_clients < num_domains:
            raise ConfigError(
                f"multi_domain needs at least one client per domain: "
                f"{num_domains} domains but {num_clients} clients"
            )
        if self.purity <= 1 / num_domains:
            raise ConfigError(
                f"multi_domain purity {self.purity} must exceed 1/{num_domains} "
                "so that each client is mostly its own domain; for clients "
                "mixing domains evenly use iid"
            )
        flow = _domain_flow(domain_sizes, self.purity)
        if flow is None:
            lowest = _lowest_feasible_purity(domain_sizes)
            raise ConfigError(
                f"multi_domain purity {self.purity} is impossible with domain sizes "
                f"{domain_sizes.tolist()}: the smallest domain cannot supply every other "
                f"client's share. Use purity >= {np.ceil(lowest * 1000) / 1000:.3f}, or "
                "sources of similar size"
            )
        home = np.arange(num_clients) % num_domains
        _check_groups_fill_clients(flow, home, domain_ids, domain_sizes)
        chunks: list[list[np.ndarray]] = [[] for _ in range(num_clients)]
        for d, domain in enumerate(domain_ids):
            rows = rng.permutation(np.flatnonzero(domains == domain))
            by_group = np.split(rows, np.cumsum(flow[d])[:-1])
            for group, group_rows in enumerate(by_group):
                members = np.flatnonzero(home == group)
                for client, piece in zip(
                    members, np.array_split(group_rows, len(members)), strict=True
                ):
                    chunks[client].append(piece)
        return [np.concatenate(c) for c in chunks]


def _check_groups_fill_clients(
    flow: np.ndarray, home: np.ndarray, domain_ids: np.ndarray, domain_sizes: np.ndarray
) -> None:
    """Raise ``ConfigError`` if some client of a domain's group would get no examples.

    Each domain's rows for a group are split with ``np.array_split`` among the
    group's clients, so client ``k`` of the group gets something only if some
    domain sends the group more than ``k`` rows: at most ``flow[:, g].max()``
    of the group's clients hold any data.
    """
    num_domains = len(domain_ids)
    capacity = flow.max(axis=0)  # (D,): clients each group can fill
    members = np.bincount(home, minlength=num_domains)
    for g in np.flatnonzero(members > capacity):
        # Client i is in group i % D, so group g fits capacity[g] clients while
        # num_clients <= capacity[g] * D + g.
        most = int((capacity * num_domains + np.arange(num_domains)).min())
        fix = (
            f"use at most {most} clients, or more data for domain {domain_ids[g]}"
            if most >= num_domains
            else f"give domain {domain_ids[g]} more examples"
        )
        raise ConfigError(
            f"multi_domain: domain {domain_ids[g]} has {domain_sizes[g]} examples, too few "
            f"for its {members[g]} clients (clients take turns over the {num_domains} domains): "
            f"only {capacity[g]} of them would get any data; {fix}"
        )


def _domain_flow(sizes: np.ndarray, purity: float) -> np.ndarray | None:
    """Integer matrix ``flow[d, e]``: examples of domain ``d`` given to clients of domain ``e``.

    Row sums equal ``sizes``; each client group's column is ``purity`` home and
    ``(1 - purity) / (D - 1)`` from each other domain. ``None`` if infeasible.
    """
    num_domains = len(sizes)
    other = (1 - purity) / (num_domains - 1)
    mix = np.full((num_domains, num_domains), other) + (purity - other) * np.eye(num_domains)
    group_sizes = np.linalg.solve(mix, sizes.astype(np.float64))
    if group_sizes.min() < -1e-9:
        return None
    real = mix * np.clip(group_sizes, 0, None)[None, :]
    # Largest-remainder rounding per row keeps every domain's total exact.
    flow = np.floor(real).astype(np.int64)
    for d in range(num_domains):
        missing = int(sizes[d] - flow[d].sum())
        flow[d, np.argsort(flow[d] - real[d])[:missing]] += 1
    return flow


def _lowest_feasible_purity(sizes: np.ndarray) -> float:
    low, high = 1 / len(sizes), 1.0  # purity 1 is always feasible
    for _ in range(40):
        mid = (low + high) / 2
        low, high = (low, mid) if _domain_flow(sizes, mid) is not None else (mid, high)
    return high
