"""DP-SGD with Opacus wrapped around a task's own training code."""

from __future__ import annotations

import copy
import pickle

import pytest
import torch
import torch.nn.functional as F

from fedgen.data.client_data import ClientData
from fedgen.data.sources import get_source
from fedgen.privacy.dpsgd import DpSgdTraining, attach_dpsgd, poisson_batches
from fedgen.tasks.gan import ConditionalGan, GanParams
from fedgen.tasks.vae import ConditionalVae, VaeParams

pytestmark = pytest.mark.filterwarnings("ignore:Full backward hook is firing")


@pytest.fixture(scope="module")
def mnist(mnist_dir):
    return get_source("mnist").load("train", mnist_dir)


def shard(mnist, n: int) -> ClientData:
    """The first ``n`` real MNIST training digits as one client's data."""
    sub = type(mnist)(
        name=mnist.name,
        images=mnist.images[:n],
        labels=mnist.labels[:n],
        class_names=mnist.class_names,
    )
    return ClientData(0, sub)


def gan(**params) -> ConditionalGan:
    torch.set_num_threads(1)
    p = GanParams(generator_width=8, discriminator_width=8, fake_labels="uniform", **params)
    return ConditionalGan(p, 10, (1, 28, 28), seed=0)


def test_poisson_batches_include_each_example_with_probability_q(mnist):
    # Prepare: n = 400, batch 40 -> q = 0.1.
    data = shard(mnist, 400)
    batches = poisson_batches(data, 40, torch.Generator().manual_seed(1))
    # Execute: 500 draws.
    sizes = [next(batches)[0].shape[0] for _ in range(500)]
    # Assert: B ~ Binomial(400, 0.1): mean 40, variance 36 (sample estimates within
    # ~5 standard errors).
    mean = sum(sizes) / len(sizes)
    var = sum((s - mean) ** 2 for s in sizes) / (len(sizes) - 1)
    assert abs(mean - 40) < 5 * (36 / 500) ** 0.5
    assert 28 < var < 46
    x, _ = next(batches)
    assert x.dtype == torch.float32 and float(x.min()) >= 0 and float(x.max()) <= 1


def pair_loss(D, real, y, fake, y_fake):
    return F.softplus(-D(real, y)).sum() + F.softplus(D(fake, y_fake)).sum()


def test_one_dp_step_equals_clipping_each_real_fake_pair_by_hand(mnist):
    """Oracle: Opacus's step on the task's discriminator loss = per-pair clip, sum, / batch.

    The cGAN's discriminator loss is two batch means (real, fake); Opacus accumulates
    the per-sample gradients of both forward passes row by row, so real i and fake i
    are clipped together as one sample -- the unit whose removal DP-SGD bounds.
    """
    # Prepare
    task = gan(batch_size=8)
    D = task.modules["discriminator"]
    gen = torch.Generator().manual_seed(3)
    real = mnist.images[:5].float() / 127.5 - 1
    y = mnist.labels[:5]
    fake = torch.rand(5, 1, 28, 28, generator=gen) * 2 - 1
    y_fake = torch.randint(0, 10, (5,), generator=gen)
    clip = 0.05
    before = [p.detach().clone() for p in D.parameters()]
    expected = [torch.zeros_like(p) for p in D.parameters()]
    for i in range(5):  # the slow, obvious reference
        D.zero_grad()
        pair_loss(D, real[i : i + 1], y[i : i + 1], fake[i : i + 1], y_fake[i : i + 1]).backward()
        grads = [p.grad.detach().clone() for p in D.parameters()]
        norm = torch.sqrt(sum(g.pow(2).sum() for g in grads))
        factor = min(1.0, clip / (float(norm) + 1e-6))
        for e, g in zip(expected, grads, strict=True):
            e += factor * g
    D.zero_grad()
    attach_dpsgd(task, noise_multiplier=1e-12, max_grad_norm=clip)
    # Execute: the task's own loss shape, through the engine, one SGD step of lr 1.
    with task.local_training(torch.Generator().manual_seed(0)) as local:
        assert isinstance(local, DpSgdTraining)
        opt = local.optimizer(torch.optim.SGD(D.parameters(), lr=1.0), ["discriminator"])
        loss = F.softplus(-D(real, y)).mean() + F.softplus(D(fake, y_fake)).mean()
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
    # Assert: the step is minus the clipped sum over the expected batch size (8).
    for p, p0, e in zip(D.parameters(), before, expected, strict=True):
        assert torch.allclose(p0 - p.detach(), e / 8, atol=1e-6), (p0 - p).abs().max()


def test_hooks_are_removed_after_training_and_the_task_pickles(mnist):
    task = gan(batch_size=16)
    attach_dpsgd(task, noise_multiplier=1.0, max_grad_norm=1.0)
    task.train_local(shard(mnist, 200), 2, torch.Generator().manual_seed(0), {})
    D = task.modules["discriminator"]
    assert all(not m._forward_hooks and not m._backward_hooks for m in D.modules())
    assert all(not hasattr(p, "grad_sample") for p in D.parameters())
    clone = pickle.loads(pickle.dumps(copy.deepcopy(task)))
    clone.train_local(shard(mnist, 200), 1, torch.Generator().manual_seed(0), {})


@pytest.mark.parametrize("family", ["cgan", "cvae"])
def test_dp_training_is_seeded_and_differs_from_plain_training(mnist, family):
    def trained(dp: bool, seed: int) -> dict[str, torch.Tensor]:
        if family == "cgan":
            task = gan(batch_size=16)
        else:
            task = ConditionalVae(VaeParams(batch_size=16, width=8), 10, (1, 28, 28), seed=0)
        if dp:
            attach_dpsgd(task, noise_multiplier=1.0, max_grad_norm=1.0)
        task.train_local(shard(mnist, 200), 2, torch.Generator().manual_seed(seed), {})
        return task.federated_state()

    a, b, c, plain = trained(True, 0), trained(True, 0), trained(True, 1), trained(False, 0)
    assert all(torch.equal(a[k], b[k]) for k in a)
    assert any(not torch.equal(a[k], c[k]) for k in a)
    assert any(not torch.equal(a[k], plain[k]) for k in a)
    assert all(torch.isfinite(v).all() for v in a.values())


def test_an_optimizer_mixing_private_and_public_modules_is_refused():
    task = gan(batch_size=16)
    attach_dpsgd(task, noise_multiplier=1.0, max_grad_norm=1.0)
    params = [*task.modules["generator"].parameters(), *task.modules["discriminator"].parameters()]
    with (
        task.local_training(torch.Generator()) as local,
        pytest.raises(Exception, match="give each group its own optimizer"),
    ):
        local.optimizer(torch.optim.SGD(params, lr=0.1), ["generator", "discriminator"])


def dp_step_on_a_shard(mnist, n: int, batch_size: int, clip: float):
    """One DP-SGD step (SGD, lr 1, no noise) of the cGAN's discriminator on a Poisson
    batch of the first ``n`` digits; returns (the step, the clipped per-pair sum, B)."""
    task = gan(batch_size=batch_size)
    D = task.modules["discriminator"]
    attach_dpsgd(task, noise_multiplier=1e-12, max_grad_norm=clip)
    before = [p.detach().clone() for p in D.parameters()]
    gen = torch.Generator().manual_seed(5)
    with task.local_training(torch.Generator().manual_seed(0)) as local:
        # The task's order: optimizers first, then batches (gan.py's train_local).
        opt = local.optimizer(torch.optim.SGD(D.parameters(), lr=1.0), ["discriminator"])
        real, y = next(local.batches(shard(mnist, n), batch_size))
        real = real * 2 - 1
        b = real.shape[0]
        fake = torch.rand(b, 1, 28, 28, generator=gen) * 2 - 1
        y_fake = torch.randint(0, 10, (b,), generator=gen)
        loss = F.softplus(-D(real, y)).mean() + F.softplus(D(fake, y_fake)).mean()
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
    step = [p0 - p.detach() for p, p0 in zip(D.parameters(), before, strict=True)]
    D.load_state_dict({k: v for k, v in zip(D.state_dict(), before, strict=True)})
    clipped = [torch.zeros_like(p) for p in D.parameters()]
    for i in range(b):  # the slow, obvious reference: clip each real/fake pair, sum
        D.zero_grad()
        pair_loss(D, real[i : i + 1], y[i : i + 1], fake[i : i + 1], y_fake[i : i + 1]).backward()
        grads = [p.grad.detach().clone() for p in D.parameters()]
        norm = torch.sqrt(sum(g.pow(2).sum() for g in grads))
        factor = min(1.0, clip / (float(norm) + 1e-6))
        for c, g in zip(clipped, grads, strict=True):
            c += factor * g
    return step, clipped, b


def test_a_shard_smaller_than_a_batch_divides_by_its_size_not_the_batch(mnist):
    """n = 5 < batch 8: q = min(1, 8/5) = 1, every draw holds all 5 examples, and the
    noisy sum is divided by the expected batch q * n = 5 (as Opacus: q * N), not by 8."""
    # Execute
    step, clipped, b = dp_step_on_a_shard(mnist, n=5, batch_size=8, clip=0.05)
    # Assert
    assert b == 5
    for s, c in zip(step, clipped, strict=True):
        assert torch.allclose(s, c / 5, atol=1e-6), (s - c / 5).abs().max()


def test_a_shard_larger_than_a_batch_still_divides_by_the_batch(mnist):
    # n = 40, batch 8: q = 0.2, expected batch q * n = 8 whatever this draw holds.
    step, clipped, b = dp_step_on_a_shard(mnist, n=40, batch_size=8, clip=0.05)
    assert b > 0
    for s, c in zip(step, clipped, strict=True):
        assert torch.allclose(s, c / 8, atol=1e-6), (s - c / 8).abs().max()


def test_which_examples_a_batch_holds_is_as_secret_as_the_noise(mnist):
    # Prepare: a client's training stream, seeded from its public round seed (7), and
    # the first Poisson batch anyone could draw from that seed alone.
    data = shard(mnist, 500)
    task = gan(batch_size=50)
    attach_dpsgd(task, noise_multiplier=1.0, max_grad_norm=1.0)
    public = torch.Generator().manual_seed(7)
    torch.randint(0, 2**62, (1,), generator=public)  # the one draw DP-SGD takes first
    guessed = data.data.images[torch.rand(500, generator=public) < 0.1].float().div(255)

    def first_batch(key: bytes | None) -> torch.Tensor:
        task.privacy_engine.noise_key = key
        with task.local_training(torch.Generator().manual_seed(7)) as local:
            return next(iter(local.batches(data, 50)))[0]

    # Execute
    key = bytes(range(32))
    batch = first_batch(key)
    # Assert: not the batch the public seed gives; the same under the same key (resume).
    assert not torch.equal(batch, guessed)
    assert torch.equal(batch, first_batch(key))
    assert not torch.equal(batch, first_batch(bytes(32)))
