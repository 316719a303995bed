"""Who masks and shares with whom: the full graph (SecAgg) or a random Harary graph (SecAgg+).

Bell et al. 2020 ("Secure Single-Server Aggregation with (Poly)Logarithmic
Overhead", Sec. 3) replace the complete graph of Bonawitz et al. by a random
k-regular graph with k = O(log n): each client then agrees keys, masks and
shares with k neighbours only. We use their construction: the Harary graph
H(k, n) (each node joined to the k/2 nearest on either side of a ring) under a
random relabelling of the clients. The relabelling is public randomness drawn
from the round's seed, so the server and every client derive the same graph.
"""

from __future__ import annotations

from collections.abc import Sequence

from fedgen.seeding import numpy_rng
from fedgen.transforms.secagg.errors import SecAggConfigError


def neighbour_graph(
    client_ids: Sequence[int], neighbours: int | None, seed: int, round: int
) -> dict[int, tuple[int, ...]]:
    """``{client: sorted neighbours}``; ``neighbours=None`` means everyone else."""
    ids = sorted(client_ids)
    n = len(ids)
    if len(set(ids)) != n:
        raise SecAggConfigError("client ids of a secure-aggregation round must be distinct")
    if neighbours is None or neighbours >= n - 1:
        return {u: tuple(v for v in ids if v != u) for u in ids}
    if neighbours % 2 or neighbours < 2:
        raise SecAggConfigError(
            f"a Harary graph needs an even degree >= 2, got {neighbours}; "
            "use SecAggConfig.plan to round it"
        )
    ring = [ids[i] for i in numpy_rng(seed, "secagg", "graph", round).permutation(n)]
    half = neighbours // 2
    graph: dict[int, set[int]] = {u: set() for u in ids}
    for pos, u in enumerate(ring):
        for step in range(1, half + 1):
            v = ring[(pos + step) % n]
            graph[u].add(v)
            graph[v].add(u)
    return {u: tuple(sorted(vs)) for u, vs in graph.items()}
