"""Choosing each client's cut: HuSCF-GAN's genetic algorithm and an exact search.

Both search over one 4-bit cut per device profile, as the public code does
(HuSCF-GAN, Tawfilis et al. 2025, arXiv 2507.12979): clients with the same
profile share a cut. That loses nothing: clients of one profile are
identical, and moving all of a profile's clients to the side some of them
already use never raises a max over clients nor the server's per-client work.

``genetic_search`` is the published GA (population 1000, 1000 generations,
tournament of 5, crossover 0.7 -- half uniform, half two-point -- and bit-flip
mutation 0.01; no elitism; the answer is the best of the last generation),
vectorised over the population. ``exact_search`` is exact because the
latency is a sum of four terms that each depend on one bit column only
(generator head, generator tail, discriminator head, discriminator tail; see
``LatencyModel.network``): minimising each term over its ``2^K`` per-profile
bit vectors minimises the sum, in ``4 * 2^K`` evaluations instead of ``16^K``.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

from fedgen.errors import ConfigError
from fedgen.split.latency import DISC_TIMES, GEN_TIMES, LatencyModel


@dataclass(frozen=True)
class SearchResult:
    """Bits per profile ``(K, 4)``, bits per client ``(N, 4)`` and the latency in seconds."""

    profile_cuts: np.ndarray
    client_cuts: np.ndarray
    latency: float
    history: list[float] = field(default_factory=list)


def expand(profile_cuts: np.ndarray, profile_of_client: np.ndarray) -> np.ndarray:
    """Per-profile bits ``(..., K, 4)`` -> per-client bits ``(..., N, 4)``."""
    return np.take(profile_cuts, profile_of_client, axis=-2)


def _check(model: LatencyModel, profile_of_client: np.ndarray) -> int:
    if len(profile_of_client) != model.num_clients:
        raise ConfigError(
            f"{len(profile_of_client)} profile indices for {model.num_clients} clients"
        )
    return int(profile_of_client.max()) + 1


def exact_search(model: LatencyModel, profile_of_client: np.ndarray) -> SearchResult:
    """The minimum latency over all per-profile cuts (``4 * 2^K`` evaluations)."""
    k = _check(model, profile_of_client)
    if k > 20:
        raise ConfigError(f"{k} profiles: the exact search enumerates 2^{k} vectors; use <= 20")
    options = (np.arange(2**k)[:, None] >> np.arange(k)[None, :]) & 1  # (2^K, K)
    per_client = options[:, profile_of_client]  # (2^K, N)
    best = np.zeros((k, 4), dtype=np.int64)
    for col, (costs, times, part) in enumerate(
        [
            (model.generator, GEN_TIMES, "head"),
            (model.generator, GEN_TIMES, "tail"),
            (model.discriminator, DISC_TIMES, "head"),
            (model.discriminator, DISC_TIMES, "tail"),
        ]
    ):
        lat = model.network(costs, per_client, per_client, times)
        best[:, col] = options[int(np.argmin(getattr(lat, part)))]
    client_cuts = expand(best, profile_of_client)
    return SearchResult(best, client_cuts, float(model.total(client_cuts)))


def genetic_search(
    model: LatencyModel,
    profile_of_client: np.ndarray,
    rng: np.random.Generator,
    population: int = 1000,
    generations: int = 1000,
    tournament: int = 5,
    crossover_rate: float = 0.7,
    mutation_rate: float = 0.01,
) -> SearchResult:
    """HuSCF-GAN's genetic algorithm over per-profile cuts (see the module docstring)."""
    k = _check(model, profile_of_client)
    if population < max(2, tournament) or generations < 1 or tournament < 1:
        raise ConfigError(
            f"population={population}, generations={generations}, tournament={tournament}: "
            "use population >= max(2, tournament), generations >= 1, tournament >= 1"
        )
    length = 4 * k
    if length < 3:
        raise ConfigError("two-point crossover needs at least 3 bits")
    pop = rng.integers(0, 2, size=(population, length))
    history: list[float] = []

    def fitness(p: np.ndarray) -> np.ndarray:
        return model.total(expand(p.reshape(-1, k, 4), profile_of_client))

    pairs = (population + 1) // 2
    for _ in range(generations):
        fit = fitness(pop)
        # Tournaments without replacement (as random.sample): redraw rows with repeats.
        picks = rng.integers(0, population, size=(2 * pairs, tournament))
        while True:
            s = np.sort(picks, axis=1)
            bad = (s[:, 1:] == s[:, :-1]).any(axis=1)
            if not bad.any():
                break
            picks[bad] = rng.integers(0, population, size=(int(bad.sum()), tournament))
        winners = picks[np.arange(2 * pairs), np.argmin(fit[picks], axis=1)]
        p1, p2 = pop[winners[0::2]], pop[winners[1::2]]
        c1, c2 = p1.copy(), p2.copy()
        cross = rng.random(pairs) < crossover_rate
        uniform = rng.random(pairs) < 0.5
        u = cross & uniform
        take1, take2 = rng.random((pairs, length)) < 0.5, rng.random((pairs, length)) < 0.5
        c1[u] = np.where(take1[u], p1[u], p2[u])
        c2[u] = np.where(take2[u], p2[u], p1[u])
        tp = cross & ~uniform
        a = rng.integers(1, length - 1, size=pairs)  # point1 in [1, L-2]
        b = rng.integers(a + 1, length)  # point2 in [point1 + 1, L-1]
        pos = np.arange(length)[None, :]
        middle = (pos >= a[:, None]) & (pos < b[:, None]) & tp[:, None]
        c1 = np.where(middle, p2, c1)
        c2 = np.where(middle, p1, c2)
        children = np.empty((2 * pairs, length), dtype=pop.dtype)
        children[0::2], children[1::2] = c1, c2
        flip = rng.random(children.shape) < mutation_rate
        pop = np.where(flip, 1 - children, children)[:population]
        history.append(float(fitness(pop).min()))
    fit = fitness(pop)
    best = pop[int(np.argmin(fit))].reshape(k, 4)
    return SearchResult(best, expand(best, profile_of_client), float(fit.min()), history)
