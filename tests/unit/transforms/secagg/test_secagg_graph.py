import pytest

from fedgen.transforms.secagg.errors import SecAggConfigError
from fedgen.transforms.secagg.graph import neighbour_graph


def test_harary_graph_is_k_regular_symmetric_and_seeded():
    # Prepare
    ids = [3, 5, 8, 11, 12, 20, 21, 30, 31, 40, 41, 50]
    # Execute
    g = neighbour_graph(ids, 4, seed=7, round=2)
    # Assert
    assert sorted(g) == ids
    assert all(len(vs) == 4 and u not in vs for u, vs in g.items())
    assert all(u in g[v] for u, vs in g.items() for v in vs)
    assert g == neighbour_graph(ids, 4, seed=7, round=2)
    assert g != neighbour_graph(ids, 4, seed=7, round=3)  # a fresh relabelling per round


def test_full_graph_and_odd_degree():
    g = neighbour_graph([0, 1, 2], None, seed=0, round=0)
    assert g == {0: (1, 2), 1: (0, 2), 2: (0, 1)}
    with pytest.raises(SecAggConfigError, match="even degree"):
        neighbour_graph(list(range(10)), 3, seed=0, round=0)
