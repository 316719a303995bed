"""Task ddpm: the noise schedule, DDIM against DDPM, bad params, partial federation."""

from __future__ import annotations

import math
from typing import Any

import pytest
import torch
from pydantic import ValidationError
from tiny_federation import tiny_config

from fedgen.config import load_config
from fedgen.data.client_data import ClientData
from fedgen.data.dataset import ImageDataset
from fedgen.engine.backends.local_training import reply_message
from fedgen.errors import ConfigError
from fedgen.experiment import build_experiment, build_task
from fedgen.modality import DataSpec, Modality
from fedgen.params import ParamsError, validate_params
from fedgen.tasks.diffusion import SCHEMES, ConditionalDdpm, DdpmParams
from fedgen.tasks.diffusion_process import GaussianDiffusion
from fedgen.tasks.unet import DECODER_BLOCKS, ENCODER_BLOCKS, LATENT_BLOCKS
from fedgen.types import state_nbytes

TINY = {"width": 8, "timesteps": 20, "sampling_steps": 4, "batch_size": 8}


def make_task(**params: Any) -> ConditionalDdpm:
    return ConditionalDdpm(DdpmParams(**{**TINY, **params}), 10, (1, 28, 28), seed=0)


# -- the process ---------------------------------------------------------------------


@pytest.mark.parametrize("schedule", ["linear", "cosine"])
def test_alpha_bar_is_the_product_of_one_minus_beta(schedule):
    # Prepare: the closed forms, written out term by term in Python floats.
    T = 1000
    if schedule == "linear":
        betas = [1e-4 + (0.02 - 1e-4) * t / (T - 1) for t in range(T)]
    else:
        f = [math.cos((t / T + 0.008) / 1.008 * math.pi / 2) ** 2 for t in range(T + 1)]
        betas = [min(1 - f[t + 1] / f[t], 0.999) for t in range(T)]
    # Execute
    d = GaussianDiffusion(T, schedule)
    # Assert: alpha_bar_t = prod_{s <= t} (1 - beta_s), and the posterior's coefficients.
    product = 1.0
    for t in (0, 1, 10, 499, 998, 999):
        product = math.prod(1 - b for b in betas[: t + 1])
        assert d.alphas_cumprod[t].item() == pytest.approx(product, rel=1e-5, abs=1e-9)
        assert d.betas[t].item() == pytest.approx(betas[t], rel=1e-5)
    prev = math.prod(1 - b for b in betas[:499])
    ab = prev * (1 - betas[499])
    assert d.posterior_variance[499].item() == pytest.approx(betas[499] * (1 - prev) / (1 - ab))
    # At t = 0 the posterior is the data itself: mean coefficient 1 on x0, variance 0.
    assert d.posterior_coef_x0[0].item() == pytest.approx(1.0)
    assert d.posterior_variance[0].item() == 0.0


def test_the_forward_process_has_the_closed_form_marginal():
    # q(x_t | x_0) = N(sqrt(abar_t) x_0, 1 - abar_t): check both moments empirically.
    d = GaussianDiffusion(100)
    g = torch.Generator().manual_seed(0)
    x0 = torch.full((20000, 1, 1, 1), 0.5)
    t = torch.full((20000,), 40)
    xt = d.q_sample(x0, t, torch.randn(x0.shape, generator=g))
    abar = d.alphas_cumprod[40].item()
    assert xt.mean().item() == pytest.approx(0.5 * math.sqrt(abar), abs=0.02)
    assert xt.var().item() == pytest.approx(1 - abar, rel=0.03)


def test_min_snr_weights_are_min_of_snr_and_gamma_over_snr():
    # Prepare: SNR_t = abar_t / (1 - abar_t) falls from about 1e4 at t = 0 to 4e-5 at T-1.
    d = GaussianDiffusion(1000)
    t = torch.arange(1000)
    abar = d.alphas_cumprod.double()
    snr = abar / (1 - abar)
    # Execute
    weights = d.loss_weights(t, 5.0)
    # Assert: 5 / SNR where the SNR exceeds 5 (nearly clean images), 1 elsewhere; none
    # without gamma (DDPM's simple loss).
    clean = snr > 5
    assert 0 < clean.sum() < 1000
    torch.testing.assert_close(weights[clean].double(), 5 / snr[clean], rtol=1e-6, atol=0)
    assert torch.equal(weights[~clean], torch.ones(int((~clean).sum())))
    assert weights[0].item() == pytest.approx(5 * (1 - abar[0].item()) / abar[0].item())
    assert torch.equal(d.loss_weights(t, None), torch.ones(1000))


def test_min_snr_training_weights_the_loss_and_a_bad_gamma_is_refused():
    # Prepare
    with pytest.raises(ValidationError, match="snr_gamma"):
        DdpmParams(snr_gamma=0)
    losses = {}
    for gamma in (None, 1e12, 5.0):
        task = make_task(timesteps=1000, snr_gamma=gamma)
        # Execute: the same steps from the same generator.
        g = torch.Generator().manual_seed(0)
        losses[gamma] = task.train_local(digits(64), 2, g, {})["loss/denoising"]
    # Assert: a gamma above every SNR weighs nothing; 5 turns down the clean steps
    # (about a fifth of a linear schedule's 1,000), so the same draws lose less.
    assert losses[1e12] == pytest.approx(losses[None], rel=1e-6)
    assert losses[5.0] < 0.95 * losses[None]


def fixed_eps(x: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
    """A deterministic stand-in for a trained network: a smooth function of x and t."""
    return torch.tanh(x) * 0.5 + 0.001 * t.view(-1, 1, 1, 1).float()


def test_ddim_with_every_step_and_eta_1_is_ddpm_ancestral_sampling():
    """Compared: for every t, DDIM's step (eta=1, prev = t-1) has the mean of DDPM's
    ancestral step, the posterior mean mu(x_t, x0_hat) = 1/sqrt(alpha_t) (x_t - beta_t /
    sqrt(1 - abar_t) eps), and its standard deviation sqrt(posterior variance); and the
    whole chain, fed the same noise draws, ends on DDPM's sample. (With eta=0 the
    deterministic step differs from the ancestral mean by O(beta_t); not compared.)"""
    T = 50
    d = GaussianDiffusion(T)
    g = torch.Generator().manual_seed(1)
    x = torch.randn(6, 1, 4, 4, generator=g)
    assert d.ddim_timesteps(T) == list(range(T - 1, -1, -1))
    for t in range(T):
        tt = torch.full((6,), t)
        eps = fixed_eps(x, tt)
        _, mean, sigma = d.ddim_step(x, t, t - 1, eps, eta=1.0, noise=None, clip=False)
        alpha, beta, abar = 1 - d.betas[t], d.betas[t], d.alphas_cumprod[t]
        ancestral = (x - beta / (1 - abar).sqrt() * eps) / alpha.sqrt()
        torch.testing.assert_close(mean, ancestral, rtol=1e-4, atol=1e-5)
        torch.testing.assert_close(mean, d.posterior_mean(x, tt, d.predict_x0(x, tt, eps)))
        assert sigma.item() == pytest.approx(d.posterior_variance[t].sqrt().item(), abs=1e-6)
    # The whole chain against a hand-written DDPM sampler drawing the same noise.
    sample = d.ddim_sample(
        fixed_eps, (6, 1, 4, 4), T, torch.Generator().manual_seed(2), eta=1.0, clip=False
    )
    g = torch.Generator().manual_seed(2)
    x = torch.randn(6, 1, 4, 4, generator=g)
    for t in range(T - 1, -1, -1):
        eps = fixed_eps(x, torch.full((6,), t))
        alpha, beta, abar = 1 - d.betas[t], d.betas[t], d.alphas_cumprod[t]
        x = (x - beta / (1 - abar).sqrt() * eps) / alpha.sqrt()
        if t > 0:
            x = x + d.posterior_variance[t].sqrt() * torch.randn(x.shape, generator=g)
    torch.testing.assert_close(sample, x.clamp(-1, 1), rtol=1e-4, atol=1e-4)


def test_ddim_with_few_steps_starts_from_pure_noise_and_ends_at_zero():
    d = GaussianDiffusion(1000)
    assert d.ddim_timesteps(10) == [999, 899, 799, 699, 599, 499, 399, 299, 199, 99]
    with pytest.raises(ValueError, match="between 1 and the 1000 training steps"):
        d.ddim_timesteps(1001)


# -- bad input -------------------------------------------------------------------------


def params_error(**params: Any) -> str:
    with pytest.raises(ParamsError) as info:
        validate_params(ConditionalDdpm, params, "task.params")
    return str(info.value)


def test_a_negative_guidance_scale_is_refused_with_what_it_means():
    message = params_error(guidance_scale=-1.0)
    assert "task.params.guidance_scale" in message and "must be >= 0" in message


def test_guidance_without_dropped_labels_is_refused_saying_what_to_set():
    # The "no label" embedding trains only on dropped labels; guidance (default 2.0, and
    # 0: unconditional) reads it.
    for guidance in (2.0, 0.0):
        message = params_error(label_dropout=0.0, guidance_scale=guidance)
        assert "set label_dropout > 0 (e.g. 0.1), or guidance_scale: 1" in message
    # Plain conditional sampling never reads it.
    assert DdpmParams(label_dropout=0.0, guidance_scale=1.0).label_dropout == 0.0


def test_more_ddim_steps_than_training_steps_is_refused():
    message = params_error(timesteps=100, sampling_steps=200)
    assert "sampling_steps (200) cannot exceed the 100 training timesteps" in message


@pytest.mark.parametrize(
    ("shape", "expected"),
    [
        ((1, 30, 30), "multiples of 4 and at least 8, got 30x30"),
        ((1, 4, 4), "at least 8, got 4x4"),
        ((2, 28, 28), "1 or 3 channels, got 2"),
    ],
)
def test_images_the_unet_cannot_take_are_a_config_error(shape, expected):
    cfg = load_config(None, ["task.name=ddpm", "task.params={width: 8, timesteps: 20}"])
    spec = DataSpec(Modality.IMAGES, num_classes=10, image_shape=shape)
    with pytest.raises(ConfigError, match=expected):
        build_task(cfg, spec)


def test_a_width_the_group_norm_cannot_split_is_refused():
    with pytest.raises(ValueError, match="multiple of 8"):
        make_task(width=12)


def test_a_scheme_or_blocks_that_do_not_exist_are_refused_naming_what_does():
    assert "unknown partial-federation scheme 'uencdec'; choose one of whole, usplit" in (
        params_error(federate="uencdec")
    )
    message = params_error(federate=["mid", "bottleneck"])
    assert "['bottleneck'] blocks the UNet does not have" in message and "up0" in message


# -- partial federation ----------------------------------------------------------------


@pytest.mark.parametrize("scheme", list(SCHEMES))
def test_each_scheme_federates_its_blocks_and_keeps_the_rest_private(scheme):
    task = make_task(federate=scheme)
    federated = {k.split(".")[1] for k in task.federated_state()}
    private = {k.split(".")[1] for k in task.private_state()}
    assert federated == set(SCHEMES[scheme]) and federated.isdisjoint(private)
    assert federated | private == {name for name, _ in task.modules["unet"].named_children()}
    if scheme == "whole":
        assert private == set() and task.federated_fraction() == 1.0
    if scheme == "udec":
        assert set(ENCODER_BLOCKS) | set(LATENT_BLOCKS) == private
    if scheme == "usplit":
        assert set(DECODER_BLOCKS) | set(LATENT_BLOCKS) == private
    assert 0 < task.federated_fraction() <= 1


def one_round(mnist_dir: Any, scheme: str) -> tuple[Any, list[Any]]:
    """One real in-process round of 2 clients; the federation and the results it received."""
    cfg = tiny_config(
        mnist_dir,
        **{
            "task.name": "ddpm",
            "task.params": "{width: 8, timesteps: 20, sampling_steps: 2, batch_size: 8, "
            f"federate: {scheme}}}",
            "federation.rounds": 1,
            "data.num_clients": 2,
            "strategy.params": "{fraction: 1.0}",
        },
    )
    fed = build_experiment(cfg).federation
    results: list[Any] = []
    original = fed.backend.run

    def spy(*args: Any, **kwargs: Any) -> Any:
        for res in original(*args, **kwargs):
            results.append(res)
            yield res

    fed.backend.run = spy  # type: ignore[method-assign]
    assert fed.run()
    return fed, results


def test_private_blocks_never_leave_their_client(mnist_dir):
    # Execute: one round of the UDec scheme and one of the whole UNet.
    fed, results = one_round(mnist_dir, "udec")
    _, whole = one_round(mnist_dir, "whole")
    task = fed.task
    private = set(task.private_state())
    assert private and {k.split(".")[1] for k in private} == {"in_conv", "down0", "down1", "mid"}
    assert len(results) == 2
    for res in results:
        # Assert on the message a client sends: no private tensor in it, every federated one.
        sent = reply_message(res).arrays
        assert not any(name.split("/", 1)[-1] in private for name in sent)
        assert set(res.update) == set(task.federated_state())
        # The client kept its own private blocks, trained away from the initial ones.
        kept = fed.private_states[res.client_id]
        assert set(kept) == private
        assert any(not torch.equal(kept[k], task.initial_private_state()[k]) for k in kept)
    # Bytes: the update is the federated share of the UNet, and the reply says so.
    numbers = sum(t.numel() for t in task.federated_state().values())
    assert state_nbytes(results[0].update) == 4 * numbers
    assert results[0].bytes_up < 0.6 * whole[0].bytes_up
    assert fed.history[-1]["bytes_up"] == sum(r.bytes_up for r in results)


def test_private_blocks_are_in_no_message_a_worker_process_sends(mnist_dir, monkeypatch):
    # Prepare: the process pool decodes every reply that crossed from its worker; record
    # each one's arrays (the job going down is recorded as encoded, before it crosses).
    from fedgen.engine.backends import process_pool

    crossed: list[set[str]] = []
    decode_reply, encode_job = process_pool.result_from_reply, process_pool.job_message

    def recorded_reply(message: Any) -> Any:
        crossed.append(set(message.arrays))
        return decode_reply(message)

    def recorded_job(*args: Any) -> Any:
        message = encode_job(*args)
        crossed.append(set(message.arrays))
        return message

    monkeypatch.setattr(process_pool, "result_from_reply", recorded_reply)
    monkeypatch.setattr(process_pool, "job_message", recorded_job)
    cfg = tiny_config(
        mnist_dir,
        **{
            "task.name": "ddpm",
            "task.params": "{width: 8, timesteps: 20, sampling_steps: 2, batch_size: 8, "
            "federate: udec}",
            "federation.rounds": 1,
            "data.num_clients": 2,
            "strategy.params": "{fraction: 1.0}",
            "backend.name": "process_pool",
            "backend.params": "{workers: 1}",
        },
    )
    fed = build_experiment(cfg).federation
    # Execute
    assert fed.run()
    # Assert: two jobs and two replies crossed; none names a private block's tensor.
    # (Names are "unet.<block>..." in a job, "update/unet.<block>..." in a reply.)
    private = set(fed.task.private_state())
    assert len(crossed) == 4 and any(k.startswith("unet.mid.") for k in private)
    for arrays in crossed:
        names = {name.split("/", 1)[-1] for name in arrays}
        assert names and names.isdisjoint(private)
        assert any(name.startswith("unet.out.") for name in names)  # federated: sent


def test_loading_a_global_state_resets_private_blocks():
    # A reused task instance never carries one client's private blocks into another model.
    task = make_task(federate="udec")
    initial = task.initial_private_state()
    task.load_state({k: v + 1 for k, v in initial.items()})
    task.load_state(task.federated_state())
    assert all(torch.equal(task.private_state()[k], v) for k, v in initial.items())


# -- training and sampling -------------------------------------------------------------


def digits(n: int) -> ClientData:
    """``n`` real-looking 28x28 images: a bright square whose position is the label."""
    g = torch.Generator().manual_seed(0)
    labels = torch.randint(10, (n,), generator=g)
    images = torch.zeros(n, 1, 28, 28, dtype=torch.uint8)
    for i, y in enumerate(labels.tolist()):
        images[i, 0, 2 * y : 2 * y + 8, 4:12] = 255
    classes = tuple(str(c) for c in range(10))
    return ClientData(0, ImageDataset("squares", images, labels, classes))


def test_training_lowers_the_denoising_loss_and_sampling_records_its_cost():
    task = make_task(lr=3e-3)
    data = digits(64)
    g = torch.Generator().manual_seed(0)
    first = task.train_local(data, 3, g, {})["loss/denoising"]
    for _ in range(4):
        last = task.train_local(data, 10, g, {})["loss/denoising"]
    assert last < 0.7 * first
    images = task.sample(torch.arange(10), torch.Generator().manual_seed(0))
    assert images.shape == (10, 1, 28, 28) and images.min() >= 0 and images.max() <= 1
    cost = task.sampling_cost()
    assert cost["ddim_steps"] == 4 and cost["sample_seconds_per_1000"] > 0
    assert "sample_seconds_per_1000" not in task.sampling_cost()  # reset by the call


def test_guidance_scale_1_is_the_conditional_model_and_0_the_unconditional():
    task = make_task(guidance_scale=1.0)
    x, t = torch.randn(3, 1, 28, 28), torch.tensor([5, 9, 13])
    labels = torch.tensor([1, 2, 3])
    unet = task.modules["unet"].eval()
    with torch.no_grad():
        cond, uncond = unet(x, t, labels), unet(x, t, torch.full_like(labels, 10))
        torch.testing.assert_close(task.guided_eps(labels)(x, t), cond)
        guided = make_task(guidance_scale=3.0).guided_eps(labels)(x, t)
        torch.testing.assert_close(guided, uncond + 3 * (cond - uncond), rtol=1e-4, atol=1e-5)
        torch.testing.assert_close(make_task(guidance_scale=0.0).guided_eps(labels)(x, t), uncond)


def test_dp_sgd_trains_the_unet_with_per_example_gradients(mnist_dir):
    # Opacus computes per-example gradients for every UNet layer (GroupNorm, no BatchNorm),
    # so the experiment accepts DP-SGD before round 1 and accounts what the round spent.
    cfg = tiny_config(
        mnist_dir,
        **{
            "task.name": "ddpm",
            "task.params": "{width: 8, timesteps: 20, sampling_steps: 2, batch_size: 32}",
            "federation.rounds": 1,
            "dpsgd": "{noise_multiplier: 1.0, max_grad_norm: 1.0}",
        },
    )
    fed = build_experiment(cfg).federation
    before = {k: v.clone() for k, v in fed.global_state.items()}
    assert fed.run()
    assert fed.privacy is not None and fed.privacy.describe()["epsilon"] > 0
    assert all(not torch.equal(before[k], fed.global_state[k]) for k in before if "weight" in k)


def test_dp_sgd_trains_a_partial_scheme_and_its_private_blocks_stay_home(mnist_dir):
    # FedDiffuse's UDec under DP-SGD: only the decoder (and embeddings) is federated; each
    # client's encoder and latent blocks train privately, under the same per-example
    # clipping and noise, and never enter the global state.
    cfg = tiny_config(
        mnist_dir,
        **{
            "task.name": "ddpm",
            "task.params": (
                "{width: 8, timesteps: 20, sampling_steps: 2, batch_size: 32, federate: udec}"
            ),
            "federation.rounds": 1,
            "dpsgd": "{noise_multiplier: 1.0, max_grad_norm: 1.0}",
        },
    )
    fed = build_experiment(cfg).federation
    before = {k: v.clone() for k, v in fed.global_state.items()}
    assert fed.run()
    assert fed.privacy is not None and fed.privacy.describe()["epsilon"] > 0
    assert before and all(k.split(".")[1] in ("up0", "up1", "out") or "embed" in k for k in before)
    assert all(not torch.equal(before[k], fed.global_state[k]) for k in before if "weight" in k)
    # Every client that trained keeps its own encoder, changed from the initial one.
    initial = fed.task.initial_private_state()
    assert fed.private_states and all(
        any(not torch.equal(state[k], initial[k]) for k in initial if "down0" in k)
        for state in fed.private_states.values()
    )
