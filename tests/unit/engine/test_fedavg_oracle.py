"""Oracle: one FedAvg round through a backend = the clients trained standalone, averaged.

A tiny real federation (the cgan task, 4 Fashion-MNIST clients of unequal sizes,
3 sampled, 3 local steps, example-weighted FedAvg, no moving average) runs one round
through the ``inprocess`` and the ``process_pool`` (2 workers) backends, built from a
recipe. Independently, each sampled client is trained here from the round's global
weights with a plain PyTorch loop written from the task's documented recipe
(``fedgen.tasks.gan``): fresh Adam(lr, betas) for each network; per step a shuffled
batch (a fresh permutation of the shard per pass), images mapped to [-1, 1], the
discriminator's non-saturating loss ``softplus(-D(real, y)) + softplus(D(G(z, y), y))``
(batch means, fakes detached), then the generator's ``softplus(-D(G(z, y), y))``, with
the client's randomness from ``torch.Generator().manual_seed(seed)``, seed =
``derive_seed(root, "round", r, "client", id)`` (``fedgen.engine.backends.local_training``).

Each client's model must match the engine's bit for bit (same operations, same seeds,
one thread as the pool's workers use). The new global state is compared with the
example-weighted mean of the client models within a tolerance only: FedAvg adds the
float64 mean of the float32 deltas to the float32 global state, while the oracle
averages the models themselves; the two round differently (a few float32 ulps), which
is far below what a wrong weighting or a missed client changes (checked below).
"""

from __future__ import annotations

from collections.abc import Iterator

import pytest
import torch
import torch.nn.functional as F

from fedgen.config import load_config
from fedgen.data.client_data import ClientData
from fedgen.data.sources import get_source
from fedgen.experiment import build_experiment
from fedgen.seeding import derive_seed
from fedgen.tasks.gan import Generator, ProjectionDiscriminator
from fedgen.types import ClientResult, StateDict

ROOT_SEED = 11
STEPS = 3
BATCH = 16
NUM_CLIENTS = 4
# FedAvg's deltas average in float64 and land on float32 weights; the oracle averages
# float32 models in float64. Weights here are O(0.1-1): a few ulps are ~1e-7.
ATOL = 2e-6


@pytest.fixture(scope="module")
def fashion_dir():
    status = get_source("fashion-mnist").status()
    if not status.present:
        pytest.skip(f"Fashion-MNIST not found ({status.provide.splitlines()[0]})")
    return status.found_at


@pytest.fixture
def one_thread():
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


def recipe(backend: str, backend_params: str):
    return load_config(
        None,
        [
            f"seed={ROOT_SEED}",
            "threads=1",
            "data.sources=[fashion-mnist]",
            f"data.num_clients={NUM_CLIENTS}",
            "data.partition.kind=quantity",
            "data.partition.params={alpha: 1.0, min_size: 200}",
            f"task.params={{batch_size: {BATCH}, generator_width: 8, discriminator_width: 8}}",
            "strategy.name=fedavg",
            "strategy.params={fraction: 0.75, min_clients: 2, weighted: true}",
            "federation.rounds=1",
            f"federation.local_steps={STEPS}",
            "eval.every=0",
            "eval.final=false",
            f"backend.name={backend}",
            f"backend.params={backend_params}",
        ],
    )


def shuffled_batches(
    data: ClientData, batch: int, gen: torch.Generator
) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
    """Consecutive slices of a fresh permutation per pass; float images in [0, 1]."""
    images, labels = data.data.images, data.data.labels
    n = images.shape[0]
    size = min(batch, n)
    while True:
        order = torch.randperm(n, generator=gen)
        for start in range(0, n - size + 1, size):
            rows = order[start : start + size]
            yield images[rows].float() / 255.0, labels[rows]


def train_standalone(
    params, num_classes: int, global_state: StateDict, data: ClientData, seed: int
) -> StateDict:
    """The reference: the task's networks, this file's own training loop."""
    with torch.random.fork_rng(devices=[]):  # module construction draws; weights are loaded
        G = Generator(params.latent_dim, num_classes, params.embed_dim, params.generator_width, 1)
        D = ProjectionDiscriminator(num_classes, params.discriminator_width, 1)
    G.load_state_dict(
        {k[len("generator.") :]: v for k, v in global_state.items() if k.startswith("generator.")}
    )
    D.load_state_dict(
        {
            k[len("discriminator.") :]: v
            for k, v in global_state.items()
            if k.startswith("discriminator.")
        }
    )
    opt_g = torch.optim.Adam(G.parameters(), lr=params.lr, betas=params.betas)
    opt_d = torch.optim.Adam(D.parameters(), lr=params.lr, betas=params.betas)
    gen = torch.Generator().manual_seed(seed)
    batches = shuffled_batches(data, params.batch_size, gen)
    for _ in range(STEPS):
        real, y = next(batches)
        real = real * 2 - 1  # (B, 1, 28, 28) in [-1, 1]
        z = torch.randn(real.shape[0], params.latent_dim, generator=gen)  # (B, latent)
        fake = G(z, y)
        loss_d = F.softplus(-D(real, y)).mean() + F.softplus(D(fake.detach(), y)).mean()
        D.zero_grad(set_to_none=True)
        loss_d.backward()
        opt_d.step()
        loss_g = F.softplus(-D(fake, y)).mean()
        G.zero_grad(set_to_none=True)
        loss_g.backward()
        opt_g.step()
    return {
        **{f"generator.{k}": v.detach().clone() for k, v in G.state_dict().items()},
        **{f"discriminator.{k}": v.detach().clone() for k, v in D.state_dict().items()},
    }


def weighted_mean(states: dict[int, StateDict], weights: dict[int, float]) -> StateDict:
    total = sum(weights.values())
    keys = next(iter(states.values())).keys()
    return {
        k: sum(weights[c] * states[c][k].double() for c in states) / total  # type: ignore[misc]
        for k in keys
    }


@pytest.mark.parametrize(
    ("backend", "backend_params"), [("inprocess", "{}"), ("process_pool", "{workers: 2}")]
)
def test_one_fedavg_round_is_the_weighted_mean_of_standalone_clients(
    backend, backend_params, fashion_dir, one_thread, monkeypatch
):
    # Prepare
    exp = build_experiment(recipe(backend, backend_params))
    fed = exp.federation
    task = fed.task
    start = {k: v.clone() for k, v in fed.global_state.items()}
    seen: dict[int, ClientResult] = {}
    aggregate = fed.strategy.aggregate

    def spy(r, results):
        def tee():
            for res in results:
                seen[res.client_id] = res
                yield res

        return aggregate(r, tee())

    monkeypatch.setattr(fed.strategy, "aggregate", spy)
    sizes = {c: d.num_examples for c, d in fed.clients.items()}
    assert len(set(sizes.values())) == NUM_CLIENTS  # unequal shards: weighting matters
    # Execute
    try:
        record = fed.run_round(0)
    finally:
        fed.backend.close()
    # Assert: 3 of the 4 clients trained and were averaged.
    assert record.metrics["clients"] == 3 and record.metrics["failures"] == 0
    assert len(seen) == 3 and all(res.ok for res in seen.values())
    assert all(res.num_examples == sizes[c] for c, res in seen.items())
    models = {}
    for c in sorted(seen):
        seed = derive_seed(ROOT_SEED, "round", 0, "client", c)
        models[c] = train_standalone(task.params, task.num_classes, start, fed.clients[c], seed)
        # The engine's update is its client's model minus the start: training is
        # reproduced exactly.
        for k in start:
            assert torch.equal(models[c][k] - start[k], seen[c].update[k]), (c, k)
    oracle = weighted_mean(models, {c: float(sizes[c]) for c in models})
    new = fed.global_state
    assert new.keys() == oracle.keys()
    for k in oracle:
        assert new[k].dtype == start[k].dtype
        assert torch.allclose(new[k].double(), oracle[k], rtol=0, atol=ATOL), (
            k,
            float((new[k].double() - oracle[k]).abs().max()),
        )
    # The tolerance is sharp enough: the unweighted mean, or leaving a client out,
    # misses by far more than ATOL.
    unweighted = weighted_mean(models, dict.fromkeys(models, 1.0))
    dropped = weighted_mean(
        {c: m for c, m in models.items() if c != min(models)},
        {c: float(sizes[c]) for c in models if c != min(models)},
    )
    for wrong in (unweighted, dropped):
        gap = max(float((new[k].double() - wrong[k]).abs().max()) for k in oracle)
        assert gap > 10 * ATOL
