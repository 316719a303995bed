"""KLD-weighted clustered aggregation of split models (HuSCF-GAN's aggregation).

Tawfilis, Amer, El-Aasser and Elshabrawy 2025, "HuSCF-GAN" (arXiv
2507.12979), as the public code (``HuSCFGAN.py``) does it. Once per round,
from the third round on (rounds 0 and 1 are plain FedAvg):

1. each client's server-side D3 activations on a real batch ``(B, C, H, W)``
   are averaged over the batch; the flattened means are clustered by k-means
   (k = number of domains, given: an oracle; or chosen by silhouette);
2. client ``j``'s weight is ``n_j * exp(-KLD_j)``, normalised, where ``KLD_j``
   compares ``P_j``, the per-channel spatial softmax of ``j``'s mean activation,
   with ``Q_j``, the mean of the other clients' ``P``. The code calls
   ``F.kl_div(log P_j, Q_j, reduction="batchmean")``, which is ``KL(Q_j || P_j)``
   divided by the channel count (its comment says ``KL(P || global)``); this
   module reproduces that;
3. each client's view of the whole network (its head and tail plus the
   server's middle) is averaged within its cluster with within-cluster KLD
   weights (heads and tails load from there), and over all clients with
   global KLD weights (the server's blocks load from there).

Everything here is a pure function of tensors, plus ``KldClusteredAggregator``
and the registered strategy ``kld_clustered`` (``KldClustered``) that runs it in
the round loop.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from pydantic import BaseModel, ConfigDict, Field

from fedgen.errors import ConfigError, RoundFailedError
from fedgen.registry import STRATEGIES
from fedgen.strategies.base import Aggregate, Strategy
from fedgen.strategies.moving_average import EmaWarmup, effective_decay, ema_update
from fedgen.strategies.sampling import build_sampler, round_plan
from fedgen.types import ClientResult, RoundPlan, StateDict


def cluster_features(activations: torch.Tensor) -> torch.Tensor:
    """``(B, C, H, W)`` -> ``(C*H*W,)``: the batch mean, flattened (the k-means input)."""
    return activations.detach().flatten(start_dim=1).mean(dim=0)


def spatial_softmax(activations: torch.Tensor) -> torch.Tensor:
    """``(B, C, H, W)`` -> ``(C, H*W)``: softmax over positions of the batch-mean map."""
    return F.softmax(activations.detach().flatten(start_dim=2).mean(dim=0).float(), dim=1)


def kld_to_others(probs: torch.Tensor, eps: float = 1e-9) -> torch.Tensor:
    """``(N, C, S)`` per-client distributions -> ``(N,)`` as the code: ``KL(Q_j || P_j) / C``.

    ``Q_j`` is the mean of the other clients' ``P``; ``eps`` is added to both
    before the logarithm. A single client has no others: its score is 0.
    """
    n, c = probs.shape[0], probs.shape[1]
    if n < 2:
        return torch.zeros(n, dtype=torch.float64)
    p = probs.double()
    q = (p.sum(dim=0, keepdim=True) - p) / (n - 1)
    p_safe, q_safe = p + eps, q + eps
    return (q_safe * (q_safe.log() - p_safe.log())).sum(dim=(1, 2)) / c


def kld_weights(num_examples: torch.Tensor, kld: torch.Tensor) -> torch.Tensor:
    """``n_j * exp(-KLD_j)`` normalised to sum to 1.

    Computed in log space, ``log n_j - KLD_j`` normalised by its log-sum-exp: with
    every KLD above ~745, ``exp(-KLD)`` underflows to 0 in float64 for all clients,
    yet the normalised weights are well defined. A client without examples weighs 0.

    Raises:
        ConfigError: if a KLD is NaN or -inf, a count is negative, no client has
            examples, or every client with examples has an infinite KLD.
    """
    kld, n = kld.double(), num_examples.double()
    if bool((torch.isnan(kld) | torch.isneginf(kld)).any()):
        raise ConfigError(
            f"KLD scores {kld.tolist()} hold NaN or -inf; check the clients' activations "
            "for NaN/Inf"
        )
    if bool((n < 0).any()):
        raise ConfigError(f"negative example counts {n.tolist()}")
    if not bool((n > 0).any()):
        raise ConfigError("every client has weight 0; give clients with examples")
    log_w = n.log() - kld  # log 0 = -inf: a client without examples weighs 0
    log_total = torch.logsumexp(log_w, dim=0)
    if not bool(torch.isfinite(log_total)):
        raise ConfigError(
            f"KLD scores {kld.tolist()} are infinite for every client with examples; "
            "check the clients' activations"
        )
    return torch.exp(log_w - log_total)


def kmeans_clusters(features: np.ndarray, k: int, seed: int = 42) -> np.ndarray:
    """k-means labels ``(N,)`` of ``features (N, F)`` (scikit-learn, ``n_init=10`` as the code)."""
    n = len(features)
    if isinstance(k, bool) or not isinstance(k, int) or k < 1:
        raise ConfigError(f"number of clusters {k!r}: use an integer >= 1")
    if k > n:
        raise ConfigError(
            f"{k} clusters but only {n} clients; use at most {n} clusters "
            "(or let silhouette choose k)"
        )
    if k == 1:
        return np.zeros(n, dtype=np.int64)
    # Imported here: scikit-learn costs about a second to import, and every deployed
    # client's process (Flower starts one per message) imports the strategies.
    from sklearn.cluster import KMeans

    return KMeans(n_clusters=k, random_state=seed, n_init=10).fit_predict(features).astype(np.int64)


def silhouette_clusters(
    features: np.ndarray, k_max: int, min_silhouette: float = 0.25, seed: int = 42
) -> np.ndarray:
    """k-means with the k in ``2..k_max`` of best silhouette; one cluster if none reaches
    ``min_silhouette`` (no oracle number of domains)."""
    n = len(features)
    if k_max < 1:
        raise ConfigError(f"k_max={k_max}: use >= 1")
    if k_max > n:
        raise ConfigError(f"k_max={k_max} but only {n} clients; use k_max <= {n}")
    best_labels, best_score = np.zeros(n, dtype=np.int64), -np.inf
    for k in range(2, min(k_max, n - 1) + 1):
        labels = kmeans_clusters(features, k, seed)
        if len(np.unique(labels)) < 2:
            continue
        from sklearn.metrics import silhouette_score

        score = float(silhouette_score(features, labels))
        if score > best_score:
            best_labels, best_score = labels, score
    return best_labels if best_score >= min_silhouette else np.zeros(n, dtype=np.int64)


def weighted_average(states: Sequence[StateDict], weights: torch.Tensor) -> StateDict:
    """``sum_j w_j * state_j`` for float tensors; integer counters take the max."""
    if len(states) != len(weights) or not states:
        raise ConfigError(f"{len(states)} states but {len(weights)} weights")
    out: StateDict = {}
    for key, first in states[0].items():
        if first.is_floating_point():
            acc = sum(w * s[key].double() for w, s in zip(weights.tolist(), states, strict=True))
            out[key] = torch.as_tensor(acc).to(first.dtype)
        else:
            out[key] = torch.stack([s[key] for s in states]).amax(dim=0)
    return out


@dataclass
class ClusteredAggregate:
    """Cluster of each client, the state each cluster's heads/tails load, the server's state."""

    cluster_of: dict[int, int]
    cluster_states: dict[int, StateDict]
    server_state: StateDict
    cluster_weights: dict[int, float]
    global_weights: dict[int, float]


class KldClusteredAggregator:
    """HuSCF-GAN's aggregation (module docstring), with an oracle or silhouette-chosen k.

    Args:
        num_clusters: k (the number of domains, an oracle); ``None`` chooses k by
            silhouette in ``2..k_max`` (one cluster below ``min_silhouette``).
        plain_rounds: rounds ``0 .. plain_rounds-1`` are plain FedAvg (2 in the code).
    """

    def __init__(
        self,
        num_clusters: int | None,
        k_max: int = 4,
        min_silhouette: float = 0.25,
        plain_rounds: int = 2,
        seed: int = 42,
    ) -> None:
        if num_clusters is not None and (not isinstance(num_clusters, int) or num_clusters < 1):
            raise ConfigError(f"num_clusters={num_clusters!r}: use an integer >= 1 or null")
        self.num_clusters = num_clusters
        self.k_max = k_max
        self.min_silhouette = min_silhouette
        self.plain_rounds = plain_rounds
        self.seed = seed

    def aggregate(
        self,
        round: int,
        views: Mapping[int, StateDict],
        num_examples: Mapping[int, int],
        activations: Mapping[int, torch.Tensor] | None = None,
    ) -> ClusteredAggregate:
        """Aggregate each client's full-network ``view`` (same keys for all clients).

        ``activations[j]`` is client ``j``'s server-side D3 output ``(B, C, H, W)``
        on a real batch; needed from round ``plain_rounds`` on.
        """
        ids = sorted(views)
        if not ids:
            raise ConfigError("no client views to aggregate")
        n = torch.tensor([float(num_examples[j]) for j in ids], dtype=torch.float64)
        states = [views[j] for j in ids]
        if round < self.plain_rounds:
            w = n / n.sum()
            avg = weighted_average(states, w)
            weights = dict(zip(ids, w.tolist(), strict=True))
            return ClusteredAggregate({j: 0 for j in ids}, {0: avg}, avg, weights, weights)
        if activations is None or set(activations) != set(ids):
            raise ConfigError("clustered rounds need every client's D3 activations")
        acts = [activations[j] for j in ids]
        feats = torch.stack([cluster_features(a) for a in acts]).double().numpy()
        if self.num_clusters is None:
            labels = silhouette_clusters(
                feats, min(self.k_max, len(ids)), self.min_silhouette, self.seed
            )
        else:
            labels = kmeans_clusters(feats, self.num_clusters, self.seed)
        probs = torch.stack([spatial_softmax(a) for a in acts])
        global_w = kld_weights(n, kld_to_others(probs))
        server_state = weighted_average(states, global_w)
        cluster_states: dict[int, StateDict] = {}
        cluster_w: dict[int, float] = {}
        for label in np.unique(labels).tolist():
            members = np.flatnonzero(labels == label)
            idx = torch.as_tensor(members)
            w = kld_weights(n[idx], kld_to_others(probs[idx]))
            cluster_states[int(label)] = weighted_average([states[i] for i in members], w)
            cluster_w.update({ids[i]: float(wi) for i, wi in zip(members, w.tolist(), strict=True)})
        return ClusteredAggregate(
            {j: int(label) for j, label in zip(ids, labels.tolist(), strict=True)},
            cluster_states,
            server_state,
            cluster_w,
            dict(zip(ids, global_w.tolist(), strict=True)),
        )


@STRATEGIES.register("kld_clustered")
class KldClustered(Strategy):
    """HuSCF-GAN's KLD-weighted clustered aggregation as a strategy (Tawfilis et al. 2025,
    arXiv 2507.12979; see the module docstring).

    Every client sends its view of the whole networks (as a delta from the global
    state), the names of the tensors it holds itself (``private_keys``: its head and
    tail) and its server-side D3 activations (``extras[feature]``); the split backend
    sends all three. The server's part becomes the new global state (global KLD
    weights); each client's own tensors come back as its cluster's average
    (within-cluster KLD weights) in ``Aggregate.private_updates``, filled in by
    ``apply``, so the clients of one cluster share the very same head and tail.
    Update transforms act on the global delta only.

    Args:
        num_clusters: k, the number of domains (an oracle, as published); ``None``
            chooses k by silhouette in ``2..k_max`` (one cluster below ``min_silhouette``).
        plain_rounds: rounds ``0 .. plain_rounds-1`` are plain FedAvg (2 in the code).
        fraction, min_clients: fixed-size client sampling (``fedgen.strategies.sampling``,
            FedAvg's default; HuSCF-GAN: every client, every round); ``min_clients`` is
            also the fewest results that aggregate.
        feature: the ``extras`` key of the activations clients are clustered by.
        cluster_seed: k-means seed (42 in the code).
        ema_decay: if set, keep an exponential moving average over rounds of the global
            state and of every client's own tensors, and sample/evaluate with it (as
            FedAvg's ``ema_decay``; Yazici et al. 2019). Training is unaffected.
            Not published: fedgen's variant. A client's average moves only in rounds
            it takes part in (HuSCF-GAN: every client, every round).
        ema_warmup: grow the decay over the first rounds, as FedAvg's (``true`` or
            ``"debias"``). The schedule counts the server's rounds, so the average of a
            client that skips rounds (``fraction`` < 1) is only approximately debiased.
        root_seed: the run's root seed (client seeds); the experiment builder passes it.
    """

    why_individual = "kld_clustered clusters clients by their own features"

    class Params(BaseModel):
        """The recipe's ``strategy.params`` (see Args; ``root_seed`` is not one)."""

        model_config = ConfigDict(extra="forbid")

        num_clusters: int | None = Field(None, ge=1)
        k_max: int = Field(4, ge=1)
        #: A silhouette score lies in [-1, 1].
        min_silhouette: float = Field(0.25, ge=-1, le=1)
        plain_rounds: int = Field(2, ge=0)
        fraction: float = Field(1.0, gt=0, le=1)
        min_clients: int = Field(1, ge=1)
        feature: str = "d3"
        cluster_seed: int = 42
        ema_decay: float | None = Field(None, ge=0, lt=1)
        ema_warmup: EmaWarmup = False

    def __init__(
        self,
        num_clusters: int | None = None,
        k_max: int = 4,
        min_silhouette: float = 0.25,
        plain_rounds: int = 2,
        fraction: float = 1.0,
        min_clients: int = 1,
        feature: str = "d3",
        cluster_seed: int = 42,
        root_seed: int = 0,
        ema_decay: float | None = None,
        ema_warmup: EmaWarmup = False,
    ) -> None:
        if plain_rounds < 0:
            raise ConfigError(f"strategy plain_rounds={plain_rounds}: use >= 0 (published: 2)")
        if ema_decay is not None and not 0.0 <= ema_decay < 1.0:
            raise ConfigError(f"strategy ema_decay must be in [0, 1) or null, got {ema_decay}")
        self.aggregator = KldClusteredAggregator(
            num_clusters, k_max, min_silhouette, plain_rounds, cluster_seed
        )
        self.sampler = build_sampler("fixed", fraction, min_clients)
        self.root_seed = root_seed
        self.min_clients = min_clients
        self.feature = feature
        #: Client -> cluster of the last aggregated round.
        self.cluster_of: dict[int, int] = {}
        #: The representative client's own tensors (see ``evaluation_state``).
        self.eval_private: StateDict = {}
        self.ema_decay = ema_decay
        self.ema_warmup = ema_warmup
        self.ema_updates = 0
        #: Moving averages (``ema_decay``): of the global state, and of each client's tensors.
        self.ema_global: StateDict | None = None
        self.ema_private: dict[int, StateDict] = {}
        self._representative: int | None = None
        self._pending: tuple[dict[int, int], dict[int, StateDict], dict[int, frozenset[str]]]
        self._pending = ({}, {}, {})

    def required_results(self) -> int:
        """The fewest results a clustered round aggregates: ``num_clusters`` (k-means needs a
        client per cluster), and never fewer than ``min_clients``."""
        return max(self.min_clients, self.aggregator.num_clusters or 1)

    def required_why(self) -> str:
        """Why ``required_results`` is what it is, for the schedules' refusals."""
        return (
            f"strategy kld_clustered with num_clusters={self.aggregator.num_clusters} and "
            f"min_clients={self.min_clients}"
        )

    def configure(self, round: int, client_ids: list[int], rng: np.random.Generator) -> RoundPlan:
        k = self.aggregator.num_clusters
        if k is not None and k > len(client_ids):
            raise ConfigError(
                f"strategy num_clusters={k} but only {len(client_ids)} clients; use at most "
                f"{len(client_ids)} clusters (or num_clusters: null to let silhouette choose)"
            )
        plan = round_plan(round, self.sampler.sample(round, client_ids, rng), self.root_seed)
        if k is not None and k > len(plan.instructions):
            raise ConfigError(
                f"strategy num_clusters={k} but only {len(plan.instructions)} clients are "
                "sampled per round; raise strategy.params.fraction or lower num_clusters"
            )
        return plan

    def aggregate(self, round: int, results: Iterable[ClientResult]) -> Aggregate:
        deltas: dict[int, StateDict] = {}
        examples: dict[int, int] = {}
        features: dict[int, torch.Tensor] = {}
        own: dict[int, frozenset[str]] = {}
        for res in results:
            assert res.update is not None  # the loop passes successful results only
            if not res.private_keys or self.feature not in res.extras:
                raise ConfigError(
                    f"strategy kld_clustered needs each client's own tensors (private_keys) "
                    f"and activations (extras[{self.feature!r}]); client {res.client_id} "
                    "sent none: use backend split with a block task (huscf_cgan)"
                )
            deltas[res.client_id] = res.update
            examples[res.client_id] = res.num_examples
            features[res.client_id] = res.extras[self.feature]
            own[res.client_id] = res.private_keys
        k = self.aggregator.num_clusters
        needed = max(
            self.min_clients, k if k is not None and round >= self.aggregator.plain_rounds else 1
        )
        if len(deltas) < needed:
            raise RoundFailedError(
                f"round {round}: {len(deltas)} usable client results, fewer than the "
                f"{needed} needed (min_clients={self.min_clients}, num_clusters={k})"
            )
        clustered = self.aggregator.aggregate(round, deltas, examples, features)
        self._pending = (clustered.cluster_of, clustered.cluster_states, own)
        sizes = np.bincount(list(clustered.cluster_of.values()))
        return Aggregate(
            delta=clustered.server_state,
            num_examples=sum(examples.values()),
            num_clients=len(deltas),
            metrics={
                "clusters": float(len(clustered.cluster_states)),
                "largest_cluster": float(sizes.max()),
            },
        )

    def apply(self, round: int, global_state: StateDict, aggregate: Aggregate) -> StateDict:
        new_state = {
            k: _add(v, aggregate.delta[k]) if k in aggregate.delta else v
            for k, v in global_state.items()
        }
        cluster_of, cluster_deltas, own = self._pending
        self._pending = ({}, {}, {})
        # One absolute tensor per cluster and key, shared by all members.
        absolute: dict[int, StateDict] = {}
        for cid, label in sorted(cluster_of.items()):
            cache = absolute.setdefault(label, {})
            for key in own[cid]:
                if key not in cache:
                    cache[key] = _add(global_state[key], cluster_deltas[label][key])
        aggregate.private_updates = {
            cid: {key: absolute[label][key] for key in sorted(own[cid])}
            for cid, label in sorted(cluster_of.items())
        }
        if cluster_of:
            self.cluster_of = dict(cluster_of)
            sizes = np.bincount(list(cluster_of.values()))
            largest = int(np.argmax(sizes))
            representative = min(c for c, lab in cluster_of.items() if lab == largest)
            self.eval_private = dict(aggregate.private_updates[representative])
            self._representative = representative
        if self.ema_decay is not None:
            d = effective_decay(self.ema_decay, self.ema_updates, self.ema_warmup)
            self.ema_global = ema_update(self.ema_global, global_state, new_state, d)
            for cid, tensors in aggregate.private_updates.items():
                before = {k: global_state[k] for k in tensors}
                self.ema_private[cid] = ema_update(self.ema_private.get(cid), before, tensors, d)
            self.ema_updates += 1
        return new_state

    def evaluation_state(self, global_state: StateDict) -> StateDict:
        """A real client's generator: the global middle with the own head and tail of the
        lowest-numbered client of the largest cluster (the global state before round 0);
        their moving averages with ``ema_decay``."""
        if self._representative is None:
            return {**global_state, **self.eval_private}
        return self.client_evaluation_state(self._representative, global_state, self.eval_private)

    def client_evaluation_state(
        self, client_id: int, global_state: StateDict, private: StateDict
    ) -> StateDict:
        if self.ema_global is not None and client_id in self.ema_private:
            return {**self.ema_global, **self.ema_private[client_id]}
        return {**global_state, **private}

    @property
    def averaging(self) -> bool:
        return self.ema_global is not None

    def state_dict(self) -> dict[str, Any]:
        state: dict[str, Any] = {
            "cluster_of": dict(self.cluster_of),
            "eval_private": dict(self.eval_private),
            "representative": self._representative,
        }
        if self.ema_global is not None:
            state["ema_global"] = dict(self.ema_global)
            state["ema_private"] = {str(c): dict(t) for c, t in self.ema_private.items()}
            state["ema_updates"] = self.ema_updates
        return state

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.cluster_of = {int(k): int(v) for k, v in state.get("cluster_of", {}).items()}
        self.eval_private = dict(state.get("eval_private", {}))
        self._representative = state.get("representative")
        self.ema_global = dict(state["ema_global"]) if "ema_global" in state else None
        self.ema_private = {int(c): dict(t) for c, t in state.get("ema_private", {}).items()}
        self.ema_updates = int(state.get("ema_updates", 0))


def _add(value: torch.Tensor, delta: torch.Tensor) -> torch.Tensor:
    """``value + delta`` in float64 for floats (then ``value``'s dtype); exact for integers."""
    if value.is_floating_point():
        return (value.double() + delta.double()).to(value.dtype)
    return value + delta.to(value.dtype)
