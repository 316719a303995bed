"""Communication graphs and mixing matrices for gossip averaging.

A gossip step replaces every client's model by a weighted mean of its own and its
neighbours' (``x_i <- sum_j W_ij x_j``). ``W`` is doubly stochastic on the regular
graphs built here (ring, random d-regular, complete), so the average of the client
models is preserved and, on a connected graph, repeated mixing drives every model
to that average at a rate set by W's second-largest eigenvalue modulus.
Metropolis weights (Xiao & Boyd 2004) are ``1 / (1 + max(d_i, d_j))`` per edge;
uniform weights are ``1 / (1 + d_i)`` for the client and each neighbour.
"""

from __future__ import annotations

import numpy as np
import torch

from fedgen.errors import ConfigError
from fedgen.types import StateDict


def neighbours(topology: str, n: int, rng: np.random.Generator, degree: int = 3) -> list[set[int]]:
    """Each node's neighbours (by position 0..n-1) in a ``ring``, ``regular`` or ``complete`` graph.

    ``regular`` draws a connected random ``degree``-regular graph from ``rng``
    (the pairing model, redrawn until simple and connected). Raises ``ConfigError``.
    """
    if n < 2:
        raise ConfigError(f"gossip needs at least 2 clients, got {n}")
    if topology == "complete":
        return [set(range(n)) - {i} for i in range(n)]
    if topology == "ring":
        return [{(i - 1) % n, (i + 1) % n} - {i} for i in range(n)]
    if topology != "regular":
        raise ConfigError(f"gossip topology must be ring, regular or complete, got {topology!r}")
    if not 1 <= degree < n or (n * degree) % 2:
        raise ConfigError(
            f"a random {degree}-regular graph on {n} clients does not exist: need "
            f"1 <= degree < {n} and clients x degree even; change federation.gossip.degree"
        )
    for _ in range(10_000):
        stubs = rng.permutation(np.repeat(np.arange(n), degree)).reshape(-1, 2)
        adj: list[set[int]] = [set() for _ in range(n)]
        simple = True
        for a, b in stubs.tolist():
            if a == b or b in adj[a]:
                simple = False
                break
            adj[a].add(b)
            adj[b].add(a)
        if simple and _connected(adj):
            return adj
    raise ConfigError(
        f"could not draw a connected {degree}-regular graph on {n} clients; raise the degree"
    )


def _connected(adj: list[set[int]]) -> bool:
    seen, todo = {0}, [0]
    while todo:
        for j in adj[todo.pop()] - seen:
            seen.add(j)
            todo.append(j)
    return len(seen) == len(adj)


def mixing_matrix(adj: list[set[int]], weights: str) -> torch.Tensor:
    """The ``(n, n)`` float64 mixing matrix W of graph ``adj`` (``metropolis`` or ``uniform``)."""
    n = len(adj)
    w = torch.zeros(n, n, dtype=torch.float64)
    for i, nbrs in enumerate(adj):
        for j in nbrs:
            if weights == "metropolis":
                w[i, j] = 1.0 / (1 + max(len(adj[i]), len(adj[j])))
            elif weights == "uniform":
                w[i, j] = 1.0 / (1 + len(nbrs))
            else:
                raise ConfigError(f"gossip weights must be metropolis or uniform, got {weights!r}")
        w[i, i] = 1.0 - w[i].sum()
    return w


def mix(models: list[StateDict], w: torch.Tensor) -> list[StateDict]:
    """``x_i <- sum_j W_ij x_j`` for every floating-point tensor (others are kept)."""
    out: list[StateDict] = [{} for _ in models]
    for key, first in models[0].items():
        if not first.is_floating_point():
            for i, m in enumerate(models):
                out[i][key] = m[key]
            continue
        # (n, *shape) in float64, so the weights' rounding does not depend on the order.
        stacked = torch.stack([m[key].to(torch.float64) for m in models])
        mixed = torch.tensordot(w, stacked, dims=1)
        for i in range(len(models)):
            out[i][key] = mixed[i].to(first.dtype)
    return out


def average(models: list[StateDict]) -> StateDict:
    """The plain mean of the client models (float tensors; others from the first)."""
    out: StateDict = {}
    for key, first in models[0].items():
        if first.is_floating_point():
            stacked = torch.stack([m[key].to(torch.float64) for m in models])
            out[key] = stacked.mean(0).to(first.dtype)
        else:
            out[key] = first
    return out


def consensus_distance(models: list[StateDict]) -> float:
    """``(1/n) sum_i ||x_i - x_bar||^2`` over all floating-point tensors."""
    total = 0.0
    for key, first in models[0].items():
        if not first.is_floating_point():
            continue
        stacked = torch.stack([m[key].to(torch.float64) for m in models])
        total += float(((stacked - stacked.mean(0)) ** 2).sum()) / len(models)
    return total
