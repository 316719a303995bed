"""The Gaussian diffusion process of DDPM and the DDIM sampler (the process, not the network).

DDPM (Ho et al. 2020): ``q(x_t | x_0) = N(sqrt(abar_t) x_0, (1 - abar_t) I)`` with
``abar_t = prod_{s<=t} (1 - beta_s)``; a network trained to predict the noise ``eps`` from
``x_t`` gives ``x0_hat = (x_t - sqrt(1 - abar_t) eps) / sqrt(abar_t)`` and the ancestral
step's mean is the posterior mean ``mu(x_t, x0_hat)`` of ``q(x_{t-1} | x_t, x_0)``.

DDIM (Song et al. 2021) steps from ``t`` to an earlier ``s`` (any subsequence of the
training steps): ``x_s = sqrt(abar_s) x0_hat + sqrt(1 - abar_s - sigma^2) eps + sigma z``
with ``sigma = eta sqrt((1 - abar_s) / (1 - abar_t)) sqrt(1 - abar_t / abar_s)``. With
``eta = 1`` and every step (``s = t - 1``) this is DDPM's ancestral step: same mean, and
``sigma^2`` is DDPM's posterior variance. ``eta = 0`` is deterministic; few steps suffice.

Timesteps are 0-based: ``t = 0`` is the least noisy, ``abar_{-1} = 1``. The schedule is
computed in float64 and kept in float32 tensors (a plain object, not a module: the
schedule is fixed by the params and never trained, sent or checkpointed).

Written here, not taken from ``diffusers``' ``DDPMScheduler``/``DDIMScheduler``: the
process is the few formulas above, held to their closed forms by the tests (noise
schedule, DDIM with every step against DDPM's ancestral mean), and draws all its noise
from the caller's ``torch.Generator`` (a client's seed); ``diffusers`` would be a
dependency of every install for them. The field's library enters where it earns its
place: ``peft``'s LoRA layers on the UNet (``fedgen.tasks.unet_lora``).
"""

from __future__ import annotations

from collections.abc import Callable

import torch

#: ``eps_model(x_t, t)``: predicted noise for a batch at integer timesteps ``t (B,)``.
EpsModel = Callable[[torch.Tensor, torch.Tensor], torch.Tensor]


def linear_betas(timesteps: int) -> torch.Tensor:
    """Ho et al.'s linear schedule, 1e-4 to 0.02 over 1000 steps, rescaled for ``timesteps``
    so that a shorter chain ends as noisy (float64, ``(timesteps,)``)."""
    scale = 1000.0 / timesteps
    return torch.linspace(scale * 1e-4, min(scale * 0.02, 0.999), timesteps, dtype=torch.float64)


def cosine_betas(timesteps: int, offset: float = 0.008) -> torch.Tensor:
    """Nichol & Dhariwal 2021's cosine schedule (float64, ``(timesteps,)``, clipped at 0.999)."""
    steps = torch.arange(timesteps + 1, dtype=torch.float64) / timesteps
    f = torch.cos((steps + offset) / (1 + offset) * torch.pi / 2) ** 2
    abar = f / f[0]
    return (1 - abar[1:] / abar[:-1]).clamp(max=0.999)


class GaussianDiffusion:
    """DDPM's forward process and posterior, and DDIM sampling, for ``timesteps`` steps."""

    def __init__(self, timesteps: int, schedule: str = "linear") -> None:
        if timesteps < 1:
            raise ValueError(f"timesteps must be >= 1, got {timesteps}")
        if schedule == "linear":
            betas = linear_betas(timesteps)
        elif schedule == "cosine":
            betas = cosine_betas(timesteps)
        else:
            raise ValueError(f"unknown schedule {schedule!r}; use 'linear' or 'cosine'")
        self.timesteps = timesteps
        abar = torch.cumprod(1 - betas, dim=0)
        abar_prev = torch.cat([torch.ones(1, dtype=torch.float64), abar[:-1]])
        self.betas = betas.float()
        self.alphas_cumprod = abar.float()
        self.alphas_cumprod_prev = abar_prev.float()
        # q(x_{t-1} | x_t, x_0) = N(coef_x0 x_0 + coef_xt x_t, posterior_variance)
        self.posterior_variance = (betas * (1 - abar_prev) / (1 - abar)).float()
        self.posterior_coef_x0 = (betas * abar_prev.sqrt() / (1 - abar)).float()
        self.posterior_coef_xt = ((1 - abar_prev) * (1 - betas).sqrt() / (1 - abar)).float()

    # -- training ---------------------------------------------------------------

    def q_sample(self, x0: torch.Tensor, t: torch.Tensor, noise: torch.Tensor) -> torch.Tensor:
        """``x_t = sqrt(abar_t) x0 + sqrt(1 - abar_t) noise`` for per-example ``t (B,)``."""
        abar = _per_example(self.alphas_cumprod, t)
        return abar.sqrt() * x0 + (1 - abar).sqrt() * noise

    def loss_weights(self, t: torch.Tensor, snr_gamma: float | None) -> torch.Tensor:
        """Each example's weight on its noise-prediction error, shape ``(B,)``.

        None: DDPM's simple loss (every weight 1). Otherwise Min-SNR-gamma (Hang et al.
        2023, "Efficient Diffusion Training via Min-SNR Weighting Strategy"): with
        ``SNR_t = abar_t / (1 - abar_t)``, the weight ``min(SNR_t, gamma) / SNR_t``, which
        is min-SNR's ``min(SNR_t, gamma)`` on the x0 error written for the eps error. It
        leaves the noisy steps (SNR below gamma) at 1 and turns down the nearly clean
        ones, whose easy gradients otherwise pull against the noisy steps'.
        """
        if snr_gamma is None:
            return torch.ones(t.shape[0])
        abar = self.alphas_cumprod[t].double()
        snr = abar / (1 - abar)
        return (snr.clamp(max=snr_gamma) / snr).float()

    # -- the reverse process ------------------------------------------------------

    def predict_x0(self, x_t: torch.Tensor, t: torch.Tensor, eps: torch.Tensor) -> torch.Tensor:
        """``x0_hat`` from the predicted noise (inverting ``q_sample``)."""
        abar = _per_example(self.alphas_cumprod, t)
        return (x_t - (1 - abar).sqrt() * eps) / abar.sqrt()

    def posterior_mean(self, x_t: torch.Tensor, t: torch.Tensor, x0: torch.Tensor) -> torch.Tensor:
        """The mean of ``q(x_{t-1} | x_t, x_0)``: DDPM's ancestral step mean given ``x0_hat``."""
        return (
            _per_example(self.posterior_coef_x0, t) * x0
            + _per_example(self.posterior_coef_xt, t) * x_t
        )

    def ddim_timesteps(self, steps: int) -> list[int]:
        """``steps`` timesteps from ``T - 1`` down, evenly spaced ("trailing", so the first
        step starts from pure noise); ``steps == T`` gives every step."""
        if not 1 <= steps <= self.timesteps:
            raise ValueError(
                f"DDIM steps must be between 1 and the {self.timesteps} training steps, got {steps}"
            )
        ratio = self.timesteps / steps
        return [round(self.timesteps - i * ratio) - 1 for i in range(steps)]

    def ddim_step(
        self,
        x_t: torch.Tensor,
        t: int,
        prev: int,
        eps: torch.Tensor,
        eta: float,
        noise: torch.Tensor | None,
        clip: bool = True,
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """One DDIM step from ``t`` to ``prev < t`` (``-1``: the end); returns
        ``(x_prev, mean, sigma)`` with ``x_prev = mean + sigma * noise``. ``clip`` clamps
        ``x0_hat`` to the data range [-1, 1] first."""
        abar = self.alphas_cumprod[t]
        abar_prev = self.alphas_cumprod[prev] if prev >= 0 else torch.tensor(1.0)
        x0 = (x_t - (1 - abar).sqrt() * eps) / abar.sqrt()
        if clip:
            x0 = x0.clamp(-1, 1)
            # The noise direction consistent with the clipped x0, as in DDIM's reference code.
            eps = (x_t - abar.sqrt() * x0) / (1 - abar).sqrt()
        sigma = eta * ((1 - abar_prev) / (1 - abar) * (1 - abar / abar_prev)).clamp(min=0).sqrt()
        direction = (1 - abar_prev - sigma**2).clamp(min=0).sqrt()
        mean = abar_prev.sqrt() * x0 + direction * eps
        if noise is None or prev < 0:
            return mean, mean, sigma
        return mean + sigma * noise, mean, sigma

    @torch.no_grad()
    def ddim_sample(
        self,
        eps_model: EpsModel,
        shape: tuple[int, ...],
        steps: int,
        generator: torch.Generator,
        eta: float = 0.0,
        clip: bool = True,
        trajectory: list[torch.Tensor] | None = None,
    ) -> torch.Tensor:
        """Samples in [-1, 1] of ``shape`` after ``steps`` DDIM steps from pure noise;
        ``trajectory``, if given, receives ``x_t`` before each step and the result."""
        x = torch.randn(shape, generator=generator)
        timesteps = self.ddim_timesteps(steps)
        for i, t in enumerate(timesteps):
            if trajectory is not None:
                trajectory.append(x.clone())
            prev = timesteps[i + 1] if i + 1 < len(timesteps) else -1
            eps = eps_model(x, torch.full((shape[0],), t, dtype=torch.long))
            noise = torch.randn(shape, generator=generator) if eta > 0 and prev >= 0 else None
            x, _, _ = self.ddim_step(x, t, prev, eps, eta, noise, clip)
        x = x.clamp(-1, 1)
        if trajectory is not None:
            trajectory.append(x.clone())
        return x


def _per_example(values: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
    """``values[t]`` shaped ``(B, 1, 1, 1)`` to broadcast over images."""
    return values[t].view(-1, 1, 1, 1)
