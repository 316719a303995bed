"""Class-conditional DDPM with classifier-free guidance and DDIM sampling (task ``ddpm``).

The network (``fedgen.tasks.unet.ConditionalUNet``) predicts the noise; the process
(``fedgen.tasks.diffusion_process.GaussianDiffusion``) noises and denoises. Training is
DDPM's simple loss (Ho et al. 2020): the mean squared error between the noise and its
prediction at a uniformly drawn timestep, one term per example (so Opacus's DP-SGD
clips each example's gradient). Classifier-free guidance (Ho & Salimans 2022): each
label is replaced by the "no label" class with probability ``label_dropout`` during
training, and sampling mixes ``eps_uncond + guidance_scale * (eps_cond - eps_uncond)``
(1: plain conditional, no second pass; 0: unconditional). Sampling runs
``sampling_steps`` DDIM steps (Song et al. 2021), ``eta`` 0 deterministic.

A pretrained UNet (``base_weights``) is fine-tuned whole, or, with ``lora_rank`` > 0,
through LoRA adapters (``fedgen.tasks.unet_lora``): the base is then frozen (never sent,
never checkpointed) and only adapters and the class embedding train and travel.

Partial federation after FedDiffuse (de Goede et al. 2024): ``federate`` names a
scheme, or the UNet blocks to federate; the other blocks are private tensors that stay
with each client (the task contract's private state). Our reading of the schemes, by
the blocks of ``fedgen.tasks.unet`` (time and class embeddings always federated, so that
every client's labels mean the same classes):

- ``whole``: every block (plain FedAvg of the UNet);
- ``usplit``: the encoder half (``in_conv``, ``down0``, ``down1``); latent and decoder
  stay private;
- ``ulatdec``: the latent and the decoder (``mid``, ``up1``, ``up0``, ``out``); the
  encoder stays private;
- ``udec``: the decoder only (``up1``, ``up0``, ``out``); encoder and latent stay private.
"""

from __future__ import annotations

import time
from typing import Any, Literal

import torch
from pydantic import Field, field_validator, model_validator
from torch import nn

from fedgen.data.client_data import ClientData
from fedgen.modality import TensorKind
from fedgen.registry import TASKS
from fedgen.tasks.base import Task, TaskParams
from fedgen.tasks.diffusion_functional import DdpmFunctionalTraining, draw_step
from fedgen.tasks.diffusion_process import GaussianDiffusion
from fedgen.tasks.unet import (
    DECODER_BLOCKS,
    EMBEDDING_BLOCKS,
    ENCODER_BLOCKS,
    LATENT_BLOCKS,
    UNET_BLOCKS,
    ConditionalUNet,
)
from fedgen.tasks.unet_lora import (
    RETRAINED_BLOCKS,
    add_lora,
    bitfit_names,
    is_adapter,
    load_unet_weights,
)
from fedgen.types import StateDict

#: Partial-federation schemes: the UNet blocks each one federates (see module docstring).
SCHEMES: dict[str, tuple[str, ...]] = {
    "whole": UNET_BLOCKS,
    "usplit": (*EMBEDDING_BLOCKS, *ENCODER_BLOCKS),
    "ulatdec": (*EMBEDDING_BLOCKS, *LATENT_BLOCKS, *DECODER_BLOCKS),
    "udec": (*EMBEDDING_BLOCKS, *DECODER_BLOCKS),
}


#: Most images denoised in one batch by ``sample``.
SAMPLE_CHUNK = 50


class DdpmParams(TaskParams):
    """Hyper-parameters of the class-conditional DDPM."""

    lr: float = Field(2e-4, gt=0)
    betas: tuple[float, float] = (0.9, 0.999)
    batch_size: int = Field(64, ge=1)
    #: UNet width at full resolution (twice that below); a multiple of 8.
    width: int = 32
    #: Training steps T of the diffusion chain.
    timesteps: int = Field(1000, ge=2)
    schedule: Literal["linear", "cosine"] = "linear"
    #: Probability that a training label is replaced by "no label" (classifier-free guidance).
    label_dropout: float = Field(0.1, ge=0, le=1)
    #: Classifier-free guidance weight at sampling: 0 unconditional, 1 conditional, >1 guided.
    guidance_scale: float = 2.0
    #: DDIM steps per sample (at most ``timesteps``).
    sampling_steps: int = Field(20, ge=1)
    #: Min-SNR-gamma loss weighting (Hang et al. 2023; they use 5): each example's error
    #: times ``min(SNR_t, gamma) / SNR_t``. None: DDPM's simple loss, every step alike.
    snr_gamma: float | None = Field(None, gt=0)
    #: DDIM's eta: 0 deterministic, 1 DDPM's ancestral noise.
    eta: float = Field(0.0, ge=0, le=1)
    #: A scheme of ``SCHEMES`` or a list of UNet blocks: what is federated; the rest is private.
    federate: str | list[str] = "whole"
    #: A file of a trained ddpm UNet's tensors to start from (see ``fedgen.tasks.unet_lora``).
    base_weights: str | None = None
    #: LoRA rank on the base's Linear layers: 0 trains the whole UNet; > 0 freezes the
    #: base (never sent) and trains and federates only adapters and the class embedding.
    lora_rank: int = Field(0, ge=0)
    #: LoRA's alpha: adapters are scaled by alpha / rank.
    lora_alpha: int = Field(8, ge=1)
    #: Also adapt every convolution (not only the Linear layers) with LoRA.
    lora_convolutions: bool = False
    #: With LoRA, also train and federate every bias and GroupNorm scale of the base
    #: (BitFit; see ``fedgen.tasks.unet_lora``).
    lora_biases: bool = False

    @field_validator("guidance_scale")
    @classmethod
    def _guidance_not_negative(cls, value: float) -> float:
        if value < 0:
            raise ValueError(
                f"guidance_scale must be >= 0 (0: unconditional, 1: conditional, >1: "
                f"guided; Ho & Salimans use 1 to 8), got {value}"
            )
        return value

    @field_validator("federate")
    @classmethod
    def _known_blocks(cls, value: str | list[str]) -> str | list[str]:
        if isinstance(value, str):
            if value not in SCHEMES:
                raise ValueError(
                    f"unknown partial-federation scheme {value!r}; choose one of "
                    f"{', '.join(SCHEMES)}, or list UNet blocks from {', '.join(UNET_BLOCKS)}"
                )
            return value
        unknown = [b for b in value if b not in UNET_BLOCKS]
        if unknown or not value:
            raise ValueError(
                f"federate names {unknown or 'no'} blocks the UNet does not have; its blocks "
                f"are {', '.join(UNET_BLOCKS)} (or name a scheme: {', '.join(SCHEMES)})"
            )
        return value

    @model_validator(mode="after")
    def _steps_within_chain(self) -> DdpmParams:
        if self.sampling_steps > self.timesteps:
            raise ValueError(
                f"sampling_steps ({self.sampling_steps}) cannot exceed the {self.timesteps} "
                f"training timesteps: DDIM samples a subsequence of them; use "
                f"sampling_steps <= {self.timesteps}"
            )
        return self

    @model_validator(mode="after")
    def _guidance_needs_dropped_labels(self) -> DdpmParams:
        # Guidance (any scale but 1) reads the "no label" embedding, which only examples
        # whose label was dropped train: without dropout it stays at its random init.
        if self.label_dropout == 0 and self.guidance_scale != 1:
            raise ValueError(
                f"guidance_scale {self.guidance_scale} mixes in the unconditional "
                "prediction, which label_dropout 0 never trains: set label_dropout > 0 "
                "(e.g. 0.1), or guidance_scale: 1 (plain conditional sampling)"
            )
        return self

    @model_validator(mode="after")
    def _lora_needs_a_base(self) -> DdpmParams:
        if self.lora_rank and self.base_weights is None:
            raise ValueError(
                "lora_rank > 0 adapts a pretrained UNet: set base_weights to its file, or "
                "lora_rank: 0 to train the whole UNet"
            )
        if self.lora_rank and self.federate != "whole":
            raise ValueError(
                "with lora_rank > 0 only adapters are federated; leave federate at 'whole'"
            )
        if self.lora_biases and not self.lora_rank:
            raise ValueError(
                "lora_biases trains the base's biases beside LoRA adapters; set lora_rank > 0 "
                "(lora_rank: 0 trains every tensor already)"
            )
        return self

    def federated_blocks(self) -> tuple[str, ...]:
        """The UNet blocks this setting federates."""
        return SCHEMES[self.federate] if isinstance(self.federate, str) else tuple(self.federate)


@TASKS.register("ddpm")
class ConditionalDdpm(Task):
    """Class-conditional DDPM with classifier-free guidance (see module docstring)."""

    Params = DdpmParams
    params: DdpmParams

    def __init__(
        self, params: TaskParams, num_classes: int, image_shape: tuple[int, int, int], seed: int
    ) -> None:
        assert isinstance(params, DdpmParams)
        self.diffusion = GaussianDiffusion(params.timesteps, params.schedule)
        self._blocks = frozenset(params.federated_blocks())
        self._sampling_seconds = 0.0
        self._sampled = 0
        super().__init__(params, num_classes, image_shape, seed)

    def build(self) -> dict[str, nn.Module]:
        p = self.params
        unet: nn.Module = ConditionalUNet(self.image_shape, self.num_classes, p.width)
        if p.base_weights is not None:
            load_unet_weights(unet, p.base_weights)
        if p.lora_rank:
            unet = add_lora(unet, p.lora_rank, p.lora_alpha, p.lora_convolutions, p.lora_biases)
        #: Base tensors that train and travel beside the adapters (``lora_biases``).
        self._bitfit = bitfit_names(unet) if p.lora_rank and p.lora_biases else frozenset()
        return {"unet": unet}

    def declared_kind(self, module: str, key: str) -> TensorKind:
        """A tensor is federated when its UNet block is, private otherwise; with LoRA the
        adapters, the class embedding (and with ``lora_biases`` the base's biases and
        GroupNorm scales) are federated and the rest is the frozen base."""
        block = key.split(".", 1)[0]
        if self.params.lora_rank:
            federated = is_adapter(key) or block in RETRAINED_BLOCKS or key in self._bitfit
            return TensorKind.FEDERATED if federated else TensorKind.FROZEN
        return TensorKind.FEDERATED if block in self._blocks else TensorKind.PRIVATE

    def load_state(self, state: StateDict) -> None:
        """Load as ``Task.load_state``; a state holding federated tensors (the global state)
        first resets the private blocks to their initial value, so what a model holds in
        them never depends on which client this instance trained last."""
        initial = getattr(self, "_initial_private", None)
        if initial and any(
            self.tensor_kind(*key.split(".", 1)) == TensorKind.FEDERATED for key in state
        ):
            super().load_state(initial)
        super().load_state(state)

    def private_data_modules(self) -> list[str]:
        return ["unet"]

    def functional_training(self) -> DdpmFunctionalTraining | None:
        """``train_local``'s iteration as a pure function (the vectorized backend's);
        None with LoRA adapters (see ``why_no_functional_training``)."""
        if self.params.lora_rank:
            return None
        p = self.params
        return DdpmFunctionalTraining(
            self.modules["unet"],
            self.diffusion,
            num_classes=self.num_classes,
            label_dropout=p.label_dropout,
            lr=p.lr,
            betas=p.betas,
            snr_gamma=p.snr_gamma,
        )

    def why_no_functional_training(self) -> str:
        if self.params.lora_rank:
            # peft's adapter layers were not checked under vmap; the oracle holds only
            # what it runs.
            return (
                "task ConditionalDdpm with lora_rank > 0 trains through peft's adapter "
                "layers, which have no vectorized step; set lora_rank: 0 or use backend "
                "inprocess"
            )
        return super().why_no_functional_training()

    def train_local(
        self, data: ClientData, steps: int, generator: torch.Generator, config: dict[str, Any]
    ) -> dict[str, float]:
        p = self.params
        unet = self.modules["unet"]
        T = self.diffusion.timesteps
        with self.local_training(generator) as local:
            opt = local.optimizer(
                torch.optim.Adam(
                    [q for q in unet.parameters() if q.requires_grad],
                    lr=float(config.get("lr", p.lr)),
                    betas=p.betas,
                ),
                ["unet"],
            )
            unet.train()
            batches = local.batches(data, p.batch_size)
            total = 0.0
            for _ in range(steps):
                images, labels = next(batches)
                # The vectorized step draws through the same function, in the same order.
                d = draw_step(images, labels, T, p.label_dropout, self.num_classes, generator)
                x0, t, noise, y = d["x0"], d["t"], d["noise"], d["y"]
                pred = unet(self.diffusion.q_sample(x0, t, noise), t, y)
                # One (weighted) squared error per example (mean over pixels), averaged
                # over the batch: per example, so DP-SGD can clip each one's gradient.
                weights = self.diffusion.loss_weights(t, p.snr_gamma)
                loss = ((pred - noise).pow(2).flatten(1).mean(1) * weights).mean()
                opt.zero_grad(set_to_none=True)
                loss.backward()
                opt.step()
                total += float(loss.detach())
        unet.eval()
        return {"loss/denoising": total / max(steps, 1)}

    def guided_eps(self, labels: torch.Tensor) -> Any:
        """``eps_model(x_t, t)`` of classifier-free guidance for ``labels`` (one per image)."""
        unet, s = self.modules["unet"], self.params.guidance_scale
        null = torch.full_like(labels, self.num_classes)

        def eps_model(x: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
            if s == 1.0:
                out: torch.Tensor = unet(x, t, labels)
                return out
            if s == 0.0:
                out = unet(x, t, null)
                return out
            # One batched pass for both predictions: (2B, C, H, W).
            both = unet(torch.cat([x, x]), torch.cat([t, t]), torch.cat([labels, null]))
            cond, uncond = both.chunk(2)
            return uncond + s * (cond - uncond)

        return eps_model

    @torch.no_grad()
    def sample(
        self,
        labels: torch.Tensor,
        generator: torch.Generator,
        trajectory: list[torch.Tensor] | None = None,
    ) -> torch.Tensor:
        """Images in [0, 1], ``(len(labels), *image_shape)``, after ``sampling_steps`` DDIM
        steps; ``trajectory`` receives each intermediate ``x_t`` (in [-1, 1] scale) when
        ``labels`` fit one batch (``SAMPLE_CHUNK``)."""
        p = self.params
        self.modules["unet"].eval()
        start = time.perf_counter()
        chunks = []
        # Small batches: a CPU convolves a few dozen 28x28 images per call several times
        # faster per image than a thousand (they stay in cache).
        for part in labels.split(SAMPLE_CHUNK):
            chunks.append(
                self.diffusion.ddim_sample(
                    self.guided_eps(part),
                    (part.shape[0], *self.image_shape),
                    p.sampling_steps,
                    generator,
                    eta=p.eta,
                    trajectory=trajectory if len(labels) <= SAMPLE_CHUNK else None,
                )
            )
        self._sampling_seconds += time.perf_counter() - start
        self._sampled += labels.shape[0]
        return (torch.cat(chunks) + 1) / 2

    def denoising_strip(self, generator: torch.Generator) -> tuple[torch.Tensor, int]:
        """One row per class: the noise ``x_T``, ``x_t`` after each DDIM step, the sample;
        returns the frames in [0, 1] row-major and the frames per row."""
        trajectory: list[torch.Tensor] = []
        self.sample(torch.arange(self.num_classes), generator, trajectory=trajectory)
        frames = torch.stack(trajectory, dim=1)  # (classes, steps + 1, C, H, W)
        frames = ((frames + 1) / 2).clamp(0, 1)
        return frames.flatten(0, 1), frames.shape[1]

    def sampling_cost(self) -> dict[str, float]:
        """Seconds per 1,000 images over the samples drawn since the last call, with the
        DDIM steps and guidance they were drawn with; resets the count."""
        figures = {
            "ddim_steps": float(self.params.sampling_steps),
            "ddpm_timesteps": float(self.params.timesteps),
            "guidance_scale": self.params.guidance_scale,
        }
        if self._sampled:
            figures["sample_seconds_per_1000"] = 1000 * self._sampling_seconds / self._sampled
        self._sampling_seconds, self._sampled = 0.0, 0
        return figures

    def federated_fraction(self) -> float:
        """Share of the UNet's parameters that are federated (1.0 for ``whole``; with LoRA,
        adapters and class embedding over the base's and the adapters' parameters)."""
        unet = self.modules["unet"]
        total = sum(p.numel() for p in unet.parameters())
        shared = sum(
            p.numel()
            for name, p in unet.named_parameters()
            if self.tensor_kind("unet", name) == TensorKind.FEDERATED
        )
        return shared / total
