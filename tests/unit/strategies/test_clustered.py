"""KLD-weighted clustered aggregation against hand-computed numbers and the code's formula."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from fedgen.errors import ConfigError, RoundFailedError
from fedgen.strategies.clustered import (
    KldClustered,
    KldClusteredAggregator,
    cluster_features,
    kld_to_others,
    kld_weights,
    kmeans_clusters,
    silhouette_clusters,
    spatial_softmax,
    weighted_average,
)
from fedgen.types import ClientResult

# One channel, two positions: client A's mean map is (0, 0), client B's is (ln 3, 0),
# so P_A = (.5, .5) and P_B = (.75, .25).
ACT_A = torch.tensor([[[[0.0, 0.0]]]])
ACT_B = torch.tensor([[[[math.log(3.0), 0.0]]]])
KL_Q_P_A = 0.75 * math.log(0.75 / 0.5) + 0.25 * math.log(0.25 / 0.5)  # KL(P_B || P_A) = 0.130812
KL_Q_P_B = 0.5 * math.log(0.5 / 0.75) + 0.5 * math.log(0.5 / 0.25)  # KL(P_A || P_B) = 0.143841


def test_kld_is_kl_of_others_to_own_hand_computed() -> None:
    # Prepare
    probs = torch.stack([spatial_softmax(ACT_A), spatial_softmax(ACT_B)])
    # Execute
    kld = kld_to_others(probs)
    # Assert: KL(Q || P), not KL(P || Q) (the two differ: 0.1308 vs 0.1438).
    assert kld.tolist() == pytest.approx([KL_Q_P_A, KL_Q_P_B], abs=1e-7)
    assert kld_to_others(probs[:1]).tolist() == [0.0]


def test_kld_matches_the_public_codes_kl_div_call() -> None:
    # Prepare: 4 clients, 3 channels, 5 positions.
    probs = torch.softmax(torch.randn(4, 3, 5, generator=torch.Generator().manual_seed(0)), dim=2)
    # Execute
    ours = kld_to_others(probs)
    # Assert: F.kl_div(log(P + eps), Q + eps, reduction="batchmean") as in HuSCFGAN.py.
    for i in range(4):
        q = (probs.sum(0) - probs[i]) / 3
        ref = F.kl_div((probs[i] + 1e-9).log(), q + 1e-9, reduction="batchmean")
        assert float(ours[i]) == pytest.approx(float(ref), rel=1e-5)


def test_weights_hand_computed() -> None:
    w = kld_weights(torch.tensor([100.0, 200.0]), torch.tensor([KL_Q_P_A, KL_Q_P_B]))
    assert w.tolist() == pytest.approx([0.336235, 0.663765], abs=1e-6)
    with pytest.raises(ConfigError):
        kld_weights(torch.zeros(2), torch.zeros(2))


def test_features_and_weighted_average() -> None:
    acts = torch.arange(8.0).view(2, 1, 2, 2)  # batch mean: (2, 3, 4, 5)
    assert cluster_features(acts).tolist() == [2.0, 3.0, 4.0, 5.0]
    states = [
        {"w": torch.tensor([1.0]), "n": torch.tensor(3)},
        {"w": torch.tensor([3.0]), "n": torch.tensor(5)},
    ]
    avg = weighted_average(states, torch.tensor([0.25, 0.75], dtype=torch.float64))
    assert avg["w"].tolist() == [2.5] and avg["n"].item() == 5 and avg["w"].dtype == torch.float32


def _two_groups(n_per: int = 3) -> np.ndarray:
    rng = np.random.default_rng(0)
    return np.concatenate([rng.normal(0, 0.1, (n_per, 6)), rng.normal(5, 0.1, (n_per, 6))])


def test_kmeans_and_more_clusters_than_clients() -> None:
    labels = kmeans_clusters(_two_groups(), 2)
    assert len(set(labels[:3])) == 1 and len(set(labels[3:])) == 1 and labels[0] != labels[3]
    with pytest.raises(ConfigError, match="7 clusters but only 6 clients"):
        kmeans_clusters(_two_groups(), 7)
    with pytest.raises(ConfigError):
        KldClusteredAggregator(num_clusters=0)


def test_silhouette_finds_two_groups_and_falls_back_to_one() -> None:
    labels = silhouette_clusters(_two_groups(), k_max=4)
    assert len(np.unique(labels)) == 2 and labels[0] != labels[3]
    noise = np.random.default_rng(1).uniform(size=(8, 6))
    assert silhouette_clusters(noise, k_max=4, min_silhouette=0.9).tolist() == [0] * 8
    with pytest.raises(ConfigError, match="k_max"):
        silhouette_clusters(noise, k_max=9)


def test_aggregator_plain_rounds_then_clusters() -> None:
    # Prepare: 4 clients; 0, 1 look like A, 2, 3 like B; view weight = client id.
    views = {j: {"w": torch.tensor([float(j)])} for j in range(4)}
    sizes = {0: 100, 1: 200, 2: 100, 3: 300}
    acts = {0: ACT_A, 1: ACT_A * 1.01, 2: ACT_B, 3: ACT_B * 1.01}
    agg = KldClusteredAggregator(num_clusters=2)
    # Execute
    plain = agg.aggregate(1, views, sizes)
    clustered = agg.aggregate(2, views, sizes, acts)
    auto = KldClusteredAggregator(num_clusters=None, min_silhouette=0.5).aggregate(
        2, views, sizes, acts
    )
    # Assert: round 1 is FedAvg: (0*100 + 1*200 + 2*100 + 3*300) / 700.
    assert plain.server_state["w"].item() == pytest.approx(1300 / 700)
    assert plain.cluster_of == {j: 0 for j in range(4)}
    c = clustered.cluster_of
    assert c[0] == c[1] != c[2] == c[3]
    assert auto.cluster_of[0] == auto.cluster_of[1] != auto.cluster_of[2]
    assert sum(clustered.global_weights.values()) == pytest.approx(1.0)
    w0, w1 = clustered.cluster_weights[0], clustered.cluster_weights[1]
    assert w0 + w1 == pytest.approx(1.0) and w1 > w0  # larger client, near-equal KLD
    assert clustered.cluster_states[c[0]]["w"].item() == pytest.approx(w1, rel=1e-6)
    with pytest.raises(ConfigError, match="activations"):
        agg.aggregate(2, views, sizes)


# -- the kld_clustered strategy --------------------------------------------------

GLOBAL = {"net.head": torch.zeros(2), "net.mid": torch.zeros(2)}
FAR = torch.tensor([[[[50.0, 50.0]]]])  # k-means puts it alone; P = (.5, .5)


def _result(cid: int, n: int, head: float, mid: list[float], act: torch.Tensor) -> ClientResult:
    return ClientResult(
        client_id=cid,
        num_examples=n,
        update={"net.head": torch.full((2,), head), "net.mid": torch.tensor(mid)},
        extras={"d3": act},
        private_keys=frozenset({"net.head"}),
    )


def _results() -> list[ClientResult]:
    return [
        _result(0, 100, 1.0, [1.0, 0.0], ACT_A),
        _result(1, 300, 3.0, [0.0, 1.0], ACT_B),
        _result(2, 200, 10.0, [2.0, 2.0], FAR),
    ]


def test_strategy_shares_cluster_heads_and_kld_weights_the_server_part() -> None:
    # Prepare
    strategy = KldClustered(num_clusters=2, plain_rounds=2)
    # Execute
    agg = strategy.aggregate(2, _results())
    new_global = strategy.apply(2, GLOBAL, agg)
    # Assert: clients 0 and 1 form one cluster; within it, weights n_j * exp(-KL(Q_j || P_j))
    # with the hand-computed KLDs of ACT_A and ACT_B.
    wa, wb = 100 * math.exp(-KL_Q_P_A), 300 * math.exp(-KL_Q_P_B)
    head01 = (wa * 1.0 + wb * 3.0) / (wa + wb)
    private = agg.private_updates
    assert sorted(private) == [0, 1, 2] and all(p.keys() == {"net.head"} for p in private.values())
    assert private[0]["net.head"].tolist() == pytest.approx([head01] * 2, rel=1e-6)
    assert private[0]["net.head"] is private[1]["net.head"]  # one shared tensor per cluster
    assert private[2]["net.head"].tolist() == [10.0, 10.0]  # alone: its own head
    # The server part: global KLD weights over all three clients.
    acts = [ACT_A, ACT_B, FAR]
    w = kld_weights(
        torch.tensor([100.0, 300.0, 200.0]),
        kld_to_others(torch.stack([spatial_softmax(a) for a in acts])),
    )
    mid = w[0] * torch.tensor([1.0, 0.0]) + w[1] * torch.tensor([0.0, 1.0]) + w[2] * 2.0
    assert new_global["net.mid"].tolist() == pytest.approx(mid.tolist(), rel=1e-6)
    assert strategy.cluster_of[0] == strategy.cluster_of[1] != strategy.cluster_of[2]
    assert agg.metrics["clusters"] == 2.0


def test_strategy_plain_rounds_are_fedavg_and_evaluation_uses_a_client_generator() -> None:
    # Prepare
    strategy = KldClustered(num_clusters=2, plain_rounds=2)
    # Execute
    agg = strategy.aggregate(0, _results())
    new_global = strategy.apply(0, GLOBAL, agg)
    # Assert: example-weighted means (100, 300, 200).
    assert new_global["net.head"].tolist() == pytest.approx([(100 + 900 + 2000) / 600] * 2)
    assert new_global["net.mid"].tolist() == pytest.approx([500 / 600, 700 / 600])
    assert agg.private_updates[2]["net.head"].tolist() == new_global["net.head"].tolist()
    # Evaluation loads the lowest client of the largest cluster over the global state,
    # and that survives a checkpoint.
    agg = strategy.aggregate(2, _results())
    g2 = strategy.apply(2, new_global, agg)
    restored = KldClustered(num_clusters=2)
    restored.load_state_dict(strategy.state_dict())
    ev = restored.evaluation_state(g2)
    assert torch.equal(ev["net.head"], agg.private_updates[0]["net.head"])
    assert torch.equal(ev["net.mid"], g2["net.mid"])


def test_strategy_bad_input_is_a_clear_error() -> None:
    rng = np.random.default_rng(0)
    with pytest.raises(ConfigError, match="num_clusters=5 but only 3 clients"):
        KldClustered(num_clusters=5).configure(0, [0, 1, 2], rng)
    with pytest.raises(ConfigError, match="sampled per round"):
        KldClustered(num_clusters=3, fraction=0.5).configure(0, [0, 1, 2, 3], rng)
    bare = ClientResult(0, 10, update={"net.head": torch.zeros(2), "net.mid": torch.zeros(2)})
    with pytest.raises(ConfigError, match="backend split"):
        KldClustered(num_clusters=1).aggregate(0, [bare])
    # Failures leave fewer results than clusters: the round fails, the run goes on.
    with pytest.raises(RoundFailedError, match="fewer than"):
        KldClustered(num_clusters=3).aggregate(2, _results()[:2])
    assert KldClustered(num_clusters=2).configure(0, [0, 1, 2], rng).client_ids == [0, 1, 2]


def test_ema_averages_global_and_own_tensors_over_rounds_and_survives_a_checkpoint() -> None:
    # Prepare: two clustered rounds (k = 2, decay 0.5): client 2 (FAR) is alone in its
    # cluster, so its own head (10) differs from the global head.
    strategy = KldClustered(num_clusters=2, plain_rounds=0, ema_decay=0.5)
    # Execute
    agg1 = strategy.aggregate(0, _results())
    g1 = strategy.apply(0, GLOBAL, agg1)
    agg2 = strategy.aggregate(1, _results())
    g2 = strategy.apply(1, g1, agg2)
    restored = KldClustered(num_clusters=2, ema_decay=0.5)
    restored.load_state_dict(strategy.state_dict())
    # Assert: each average starts at the round-0 start state (zeros): after two rounds it
    # is 0.25 * 0 + 0.25 * (round 1) + 0.5 * (round 2), for the server's tensors and for
    # the client's own head, which is its cluster's, not the global one.
    expect_mid = 0.25 * g1["net.mid"] + 0.5 * g2["net.mid"]
    own1, own2 = agg1.private_updates[2]["net.head"], agg2.private_updates[2]["net.head"]
    expect_head = 0.25 * own1 + 0.5 * own2
    assert own1.tolist() == [10.0, 10.0] and not torch.equal(own2, g2["net.head"])
    for s in (strategy, restored):
        assert s.averaging and s.ema_updates == 2
        ev = s.client_evaluation_state(2, g2, agg2.private_updates[2])
        assert ev["net.mid"].tolist() == pytest.approx(expect_mid.tolist())
        assert ev["net.head"].tolist() == pytest.approx(expect_head.tolist())
        assert s.evaluation_state(g2)["net.mid"].tolist() == pytest.approx(expect_mid.tolist())
    # Training is unaffected: the next round starts from the plain aggregate.
    assert not torch.equal(g2["net.mid"], expect_mid)
    assert not KldClustered(num_clusters=2).averaging
    with pytest.raises(ConfigError, match="ema_decay"):
        KldClustered(ema_decay=1.0)
