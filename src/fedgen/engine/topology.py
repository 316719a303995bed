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
    (``random_regular_graph``). Raises ``ConfigError`` when no such graph exists.
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
    if degree == 1 and n > 2:
        raise ConfigError(
            f"a 1-regular graph on {n} clients is {n // 2} separate pairs, never connected: "
            "the models would never mix beyond a pair; use federation.gossip.degree >= 2"
        )
    return random_regular_graph(n, degree, rng)


#: Draws of the pairing model before the constructive method takes over. A draw is a
#: simple graph with probability about exp(-(d^2 - 1) / 4): within this many draws most
#: runs up to degree 4 find one (the graph the pairing model alone gave them before),
#: almost none from degree 6 on.
PAIRING_DRAWS = 100

#: Degree-keeping edge switches per edge that randomise the constructed graph.
SWITCHES_PER_EDGE = 10


def random_regular_graph(n: int, degree: int, rng: np.random.Generator) -> list[set[int]]:
    """A connected random ``degree``-regular graph on ``n`` nodes, drawn from ``rng``.

    First the pairing model (Bollobas 1980; uniform over the simple graphs), redrawn
    until simple and connected, at most ``PAIRING_DRAWS`` times; then
    ``switched_harary_graph``, which succeeds for every ``n``, ``degree`` of a connected
    regular graph (``2 <= degree < n``, or ``n = 2``; ``n * degree`` even).
    """
    for _ in range(PAIRING_DRAWS):
        stubs = rng.permutation(np.repeat(np.arange(n), degree)).reshape(-1, 2)
        lo, hi = stubs.min(axis=1), stubs.max(axis=1)
        # Simple: no self-loop, no pair twice (checked at once: most draws fail here).
        if (lo == hi).any() or len(np.unique(lo * n + hi)) < len(lo):
            continue
        adj: list[set[int]] = [set() for _ in range(n)]
        for a, b in zip(lo.tolist(), hi.tolist(), strict=True):
            adj[a].add(b)
            adj[b].add(a)
        if _connected(adj):
            return adj
    return switched_harary_graph(n, degree, rng)


def switched_harary_graph(n: int, degree: int, rng: np.random.Generator) -> list[set[int]]:
    """A connected ``degree``-regular graph: Harary's ``H(degree, n)`` randomised by edge
    switches.

    ``H`` joins node ``i`` to ``i +- 1 .. degree // 2`` (mod n) and, for an odd degree,
    to ``i + n / 2``: regular and connected by construction. Nodes are relabelled at
    random, then ``SWITCHES_PER_EDGE`` switches per edge replace two edges ``a-b, c-e``
    by ``a-c, b-e`` when that keeps the graph simple (every degree is kept; the chain
    approaches the uniform distribution over simple regular graphs, as in Milo et al.
    2003). A switch may disconnect the graph: each extra component is then joined by one
    more switch (see ``_join``).
    """
    half = n // 2
    pairs = {(i, (i + k) % n) for i in range(n) for k in range(1, degree // 2 + 1)}
    if degree % 2:
        pairs |= {(i, i + half) for i in range(half)}
    label = rng.permutation(n).tolist()
    edges = sorted(_edge(label[a], label[b]) for a, b in pairs)
    adj: list[set[int]] = [set() for _ in range(n)]
    for a, b in edges:
        adj[a].add(b)
        adj[b].add(a)
    switches = SWITCHES_PER_EDGE * len(edges)
    # Drawn at once: one generator call per switch would cost more than the switch.
    picks = rng.integers(len(edges), size=(switches, 2)).tolist()
    flips = (rng.random(switches) < 0.5).tolist()
    for (i, j), flip in zip(picks, flips, strict=True):
        (a, b), (c, e) = edges[i], edges[j]
        if flip:
            c, e = e, c
        if len({a, b, c, e}) < 4 or c in adj[a] or e in adj[b]:
            continue
        _switch(adj, (a, b), (c, e))
        edges[i], edges[j] = _edge(a, c), _edge(b, e)
    while len(parts := _components(adj)) > 1:
        _join(adj, parts[0], parts[1], rng)
    return adj


def _edge(a: int, b: int) -> tuple[int, int]:
    return (a, b) if a < b else (b, a)


def _switch(adj: list[set[int]], ab: tuple[int, int], ce: tuple[int, int]) -> None:
    """Replace edges ``a-b`` and ``c-e`` by ``a-c`` and ``b-e`` (every degree is kept)."""
    (a, b), (c, e) = ab, ce
    adj[a].remove(b)
    adj[b].remove(a)
    adj[c].remove(e)
    adj[e].remove(c)
    adj[a].add(c)
    adj[c].add(a)
    adj[b].add(e)
    adj[e].add(b)


def _join(
    adj: list[set[int]], first: list[int], second: list[int], rng: np.random.Generator
) -> None:
    """Join two components by one switch of an edge ``a-b`` of ``first`` that lies on a
    cycle (every node has degree >= 2, so one exists) and any edge ``c-e`` of ``second``.

    ``first`` without ``a-b`` stays connected and holds a and b; ``second`` without
    ``c-e`` falls into at most a part with c and a part with e, which ``a-c`` and
    ``b-e`` both join to it.
    """
    candidates = sorted({_edge(a, b) for a in first for b in adj[a]})
    for k in rng.permutation(len(candidates)).tolist():
        a, b = candidates[k]
        if _reaches(adj, a, b, without=(a, b)):
            break
    else:  # unreachable for degree >= 2: a component without a cycle is a tree
        raise AssertionError("a component of a regular graph of degree >= 2 has no cycle")
    c = second[int(rng.integers(len(second)))]
    others = sorted(adj[c])
    e = others[int(rng.integers(len(others)))]
    _switch(adj, (a, b), (c, e))


def _reaches(adj: list[set[int]], start: int, goal: int, without: tuple[int, int]) -> bool:
    """Whether ``goal`` is reachable from ``start`` without crossing edge ``without``."""
    seen, todo = {start}, [start]
    while todo:
        node = todo.pop()
        for j in adj[node]:
            if _edge(node, j) == without or j in seen:
                continue
            if j == goal:
                return True
            seen.add(j)
            todo.append(j)
    return False


def _components(adj: list[set[int]]) -> list[list[int]]:
    """The connected components, each as its sorted nodes, in order of their least node."""
    parts: list[list[int]] = []
    seen: set[int] = set()
    for root in range(len(adj)):
        if root in seen:
            continue
        part, todo = {root}, [root]
        while todo:
            for j in adj[todo.pop()] - part:
                part.add(j)
                todo.append(j)
        seen |= part
        parts.append(sorted(part))
    return parts


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
