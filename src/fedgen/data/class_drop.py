"""HuSCF-GAN's non-IID schemes: each client drops whole classes and may hold less data.

Tawfilis et al. 2025, "HuSCF-GAN" (arXiv 2507.12979), as the public code
(``Data/data.py``) builds its scenarios. Each domain's examples are shuffled
and split equally among that domain's clients (client ``i`` belongs to domain
``i % D``, as in ``MultiDomainPartitioner``); each client then drops a random
set of classes and keeps at most ``floor(ratio * samples_per_client)`` of the
rest (750 in the paper):

- ``iid``: no classes dropped, ratio 1;
- ``non_iid``: drops 0, 2, 3 or 4 classes with weights (.25, .3, .1, .1)
  (normalised, as ``random.choices`` does: 1/3, 0.4, 2/15, 2/15); ratio 2/3
  with probability 0.3, else 1;
- ``highly_non_iid``: drops 2 or 3 classes with weights (.4, .6); ratio 1/6
  with probability 0.2, 1/3 with probability 0.3, else 1.

Unlike the other partitioners this one subsamples: the shares are disjoint
but do not cover every example (the paper gives 80 clients 750 of 60,000).
A draw that leaves a client empty (``samples_per_client`` below ``1 / ratio``,
or a tiny share holding only dropped classes) raises ``ConfigError``.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

import numpy as np
from pydantic import BaseModel, ConfigDict, Field

from fedgen.data.partition import Partitioner
from fedgen.errors import ConfigError
from fedgen.registry import PARTITIONERS

Scheme = Literal["iid", "non_iid", "highly_non_iid"]

#: scheme -> ((class counts to drop, weights), (size ratios, probabilities))
SCHEMES: dict[
    str,
    tuple[tuple[tuple[int, ...], tuple[float, ...]], tuple[tuple[float, ...], tuple[float, ...]]],
] = {
    "iid": (((0,), (1.0,)), ((1.0,), (1.0,))),
    "non_iid": (((0, 2, 3, 4), (0.25, 0.3, 0.1, 0.1)), ((2 / 3, 1.0), (0.3, 0.7))),
    "highly_non_iid": (((2, 3), (0.4, 0.6)), ((1 / 6, 1 / 3, 1.0), (0.2, 0.3, 0.5))),
}


def drop_count_probabilities(scheme: str) -> dict[int, float]:
    """``{classes dropped: probability}`` of ``scheme`` (weights normalised)."""
    (counts, weights), _ = SCHEMES[scheme]
    total = sum(weights)
    return {c: w / total for c, w in zip(counts, weights, strict=True)}


@PARTITIONERS.register("class_drop")
@dataclass(frozen=True)
class ClassDropPartitioner(Partitioner):
    """HuSCF-GAN's iid / non-iid / highly non-iid client shares (module docstring)."""

    class Params(BaseModel):
        """``data.partition.params`` of ``class_drop``."""

        model_config = ConfigDict(extra="forbid")

        scheme: Scheme = "non_iid"
        #: A client's share before its size ratio scales it (paper: 750).
        samples_per_client: int = Field(750, ge=1)

    scheme: Scheme = "non_iid"
    samples_per_client: int = 750

    def __post_init__(self) -> None:
        if self.scheme not in SCHEMES:
            raise ConfigError(f"class_drop scheme {self.scheme!r}: use one of {', '.join(SCHEMES)}")
        if isinstance(self.samples_per_client, bool) or self.samples_per_client < 1:
            raise ConfigError(
                f"class_drop samples_per_client={self.samples_per_client}: use >= 1 (paper: 750)"
            )

    def _split(
        self,
        labels: np.ndarray,
        num_clients: int,
        rng: np.random.Generator,
        domains: np.ndarray | None,
    ) -> list[np.ndarray]:
        classes = np.unique(labels)
        (counts, weights), (ratios, ratio_p) = SCHEMES[self.scheme]
        if max(counts) >= len(classes):
            raise ConfigError(
                f"class_drop {self.scheme} may drop {max(counts)} classes but the data has "
                f"only {len(classes)}; use data with more classes or scheme 'iid'"
            )
        domain_ids = np.unique(domains) if domains is not None else np.zeros(1, dtype=np.int64)
        if num_clients < len(domain_ids):
            raise ConfigError(
                f"{len(domain_ids)} domains but {num_clients} clients; give each domain a client"
            )
        home = np.arange(num_clients) % len(domain_ids)
        p_drop = np.asarray(weights) / sum(weights)
        parts: list[np.ndarray] = [np.empty(0, dtype=np.int64)] * num_clients
        for d, domain in enumerate(domain_ids):
            rows = np.arange(len(labels)) if domains is None else np.flatnonzero(domains == domain)
            members = np.flatnonzero(home == d)
            for client, share in zip(
                members, np.array_split(rng.permutation(rows), len(members)), strict=True
            ):
                n_drop = int(rng.choice(counts, p=p_drop))
                dropped = rng.choice(classes, size=n_drop, replace=False)
                kept = share[~np.isin(labels[share], dropped)]
                ratio = float(rng.choice(ratios, p=np.asarray(ratio_p)))
                limit = int(np.floor(ratio * self.samples_per_client + 1e-9))
                parts[client] = kept[:limit]  # ``share`` is already shuffled
                if len(parts[client]) == 0:
                    # A check, not a redraw: splits that work today stay bit-identical.
                    source = None if domains is None else domain
                    raise self._empty_client_error(int(client), source, len(share), limit, ratio)
        return parts

    def _empty_client_error(
        self, client: int, domain: object | None, share_size: int, limit: int, ratio: float
    ) -> ConfigError:
        """The ``ConfigError`` for a client left with no examples, saying what to change.

        ``domain`` is the client's domain id, ``None`` for single-source data.
        """
        where = f"class_drop scheme {self.scheme!r} left client {client} with no examples"
        share = "its share" if domain is None else f"its share of domain {domain}"
        if limit == 0:
            # Smallest samples_per_client whose smallest size ratio still keeps one example.
            smallest = min(SCHEMES[self.scheme][1][0])
            needed = int(np.ceil(1 / smallest - 1e-9))
            return ConfigError(
                f"{where}: it drew size ratio {ratio:.3g} and floor({ratio:.3g} x "
                f"samples_per_client={self.samples_per_client}) = 0. Raise samples_per_client "
                f"to at least {needed} (paper: 750)"
            )
        held = (
            f"{share} was empty (fewer examples than clients)"
            if share_size == 0
            else f"{share} held {share_size} example(s), all in the classes it dropped"
        )
        return ConfigError(
            f"{where}: {held}. Raising samples_per_client does not help here; give each "
            "client more data (fewer clients, or more examples per domain)"
        )
