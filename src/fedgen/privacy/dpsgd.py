"""Sample-level DP-SGD inside each client's local training, with Opacus (Abadi et al.
2016, "Deep Learning with Differential Privacy").

Wrap, don't rewrite, as Opacus's ``PrivacyEngine`` does: a task's ``train_local``
opens ``task.local_training(generator)`` and draws its batches and optimizers from
it. With an engine attached that source

- hands out Poisson-sampled batches (each example joins each step independently with
  probability q = batch_size / n, the sampling Opacus's accountants assume);
- turns the optimizers of the task's ``private_data_modules()`` into Opacus
  ``DPOptimizer``s (per-sample gradients clipped to ``max_grad_norm``, Gaussian noise
  of ``noise_multiplier * max_grad_norm`` on their sum, divided by the expected batch
  q * n, which is n, not ``batch_size``, for a shard smaller than a batch),
  with per-sample gradients from Opacus's ``GradSampleModule`` hooks, attached for the
  call and removed after it so the task stays a plain, picklable module tree. The sigma
  is the engine's, or the client's own under per-client calibration
  (``dpsgd.noise_per_client``), known once ``batches`` names the client.

The noise generator, and the one that draws the Poisson batches, are seeded with the
client's secret noise key and its round seed (``fedgen.privacy.noise_key``; the backend
sets ``engine.noise_key`` before each call): unpredictable from the run's config (which
examples a step read is as secret as its noise), bit-identical on resume.
A Poisson draw with no example is drawn again (the networks cannot take an empty
batch); ``empty_batch_probability`` bounds how often that happens, and the experiment
check requires it to be negligible against delta.
"""

from __future__ import annotations

import warnings
from collections.abc import Iterator, Sequence
from typing import Any

import torch
from opacus import GradSampleModule
from opacus.optimizers import DPOptimizer
from opacus.validators import ModuleValidator

from fedgen.data.client_data import ClientData
from fedgen.privacy.errors import PrivacyConfigError
from fedgen.privacy.noise_key import noise_generator
from fedgen.tasks.base import LocalTraining, Task

# Opacus's per-sample hooks are full backward hooks; on a first layer whose input needs
# no gradient torch warns on every call. Expected here, and not actionable by a user.
warnings.filterwarnings(
    "ignore", message="Full backward hook is firing when gradients are computed with respect"
)


def poisson_sample_rate(batch_size: int, num_examples: int) -> float:
    """q = batch_size / n, capped at 1 (a shard smaller than a batch is used whole)."""
    return min(1.0, batch_size / max(num_examples, 1))


def expected_batch_size(batch_size: int, num_examples: int) -> int:
    """q * n, the mean size of a Poisson batch: ``batch_size``, or the whole shard when it
    is smaller than a batch (q is capped at 1). DP-SGD divides its noisy sum by this."""
    return max(1, min(batch_size, num_examples))


def empty_batch_probability(batch_size: int, num_examples: int) -> float:
    """Chance that one Poisson draw holds no example: (1 - q) ** n."""
    q = poisson_sample_rate(batch_size, num_examples)
    return float((1.0 - q) ** num_examples)


def poisson_batches(
    data: ClientData, batch_size: int, generator: torch.Generator
) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
    """Endless Poisson-sampled batches ``(images (B,1,28,28) in [0,1], labels (B,))``.

    B varies around ``batch_size``; each example is in each batch with probability q.
    """
    n = data.num_examples
    if n == 0:
        raise ValueError(
            f"client {data.client_id} holds no examples; use a partitioner with "
            "min_size >= 1 or fewer clients"
        )
    q = poisson_sample_rate(batch_size, n)
    images, labels = data.data.images, data.data.labels
    while True:
        mask = torch.rand(n, generator=generator) < q
        if not bool(mask.any()):
            continue  # see the module docstring: bounded by empty_batch_probability
        idx = mask.nonzero().squeeze(1)
        yield images[idx].float().div_(255.0), labels[idx]


class DpSgdTraining(LocalTraining):
    """One ``train_local`` call under DP-SGD (see the module docstring)."""

    def __init__(self, engine: DpSgdEngine, task: Task, generator: torch.Generator) -> None:
        super().__init__(generator)
        self.engine = engine
        self.task = task
        self.private = set(task.private_data_modules())
        # One draw from the client's stream says where the noise is drawn; the secret
        # key makes it unpredictable from that public seed.
        seed = int(torch.randint(0, 2**62, (1,), generator=generator))
        self.noise_generator = noise_generator(engine.noise_key, seed, "dpsgd")
        # Which examples each batch holds must be as secret as the noise: amplification
        # by sampling assumes nobody can tell, and the client's stream is public.
        self.batch_generator = noise_generator(engine.noise_key, seed, "dpsgd", "batches")
        self.hooked: list[GradSampleModule] = []
        self.dp_optimizers: list[DPOptimizer] = []
        # q * n of the shard, known once ``batches`` is opened (tasks may make their
        # optimizers first); until then the task's batch size, right for n >= batch.
        self.expected_batch = int(task.params.batch_size)
        # Likewise the client's own sigma under per-client calibration.
        self.noise_multiplier = engine.noise_multiplier

    def batches(
        self, data: ClientData, batch_size: int
    ) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        self.expected_batch = expected_batch_size(batch_size, data.num_examples)
        self.noise_multiplier = self.engine.noise_for(data.client_id)
        for opt in self.dp_optimizers:
            opt.expected_batch_size = self.expected_batch
            opt.noise_multiplier = self.noise_multiplier
        return poisson_batches(data, batch_size, self.batch_generator)

    def optimizer(
        self, optimizer: torch.optim.Optimizer, modules: Sequence[str]
    ) -> torch.optim.Optimizer:
        touched = self.private.intersection(modules)
        if not touched:
            return optimizer  # e.g. a GAN generator: trained only through private modules
        if touched != set(modules):
            raise PrivacyConfigError(
                [
                    f"one optimizer trains private modules {sorted(touched)} together with "
                    f"{sorted(set(modules) - touched)}; DP-SGD clips per-sample gradients "
                    "of one module group: give each group its own optimizer"
                ]
            )
        for name in modules:
            self.hooked.append(
                GradSampleModule(self.task.modules[name], batch_first=True, loss_reduction="mean")
            )
        dp_optimizer = DPOptimizer(
            optimizer,
            noise_multiplier=self.noise_multiplier,
            max_grad_norm=self.engine.max_grad_norm,
            expected_batch_size=self.expected_batch,
            loss_reduction="mean",
            generator=self.noise_generator,
        )
        self.dp_optimizers.append(dp_optimizer)
        return dp_optimizer

    def close(self) -> None:
        # Remove hooks and per-sample buffers: the module is plain again between calls.
        for gsm in self.hooked:
            gsm.to_standard_module()
            for p in gsm._module.parameters():
                for attr in ("grad_sample", "summed_grad", "_forward_counter"):
                    if hasattr(p, attr):
                        delattr(p, attr)
        self.hooked.clear()
        self.dp_optimizers.clear()


class DpSgdEngine:
    """Attached to a task (``task.privacy_engine``): DP-SGD on its private modules.

    Args:
        noise_multiplier: sigma, the noise standard deviation in units of
            ``max_grad_norm``.
        max_grad_norm: the per-sample gradient clip bound.
        client_noise: each client's own sigma (per-client calibration), which
            overrides ``noise_multiplier`` for the clients it names.
    """

    def __init__(
        self,
        noise_multiplier: float,
        max_grad_norm: float,
        client_noise: dict[int, float] | None = None,
    ) -> None:
        self.noise_multiplier = float(noise_multiplier)
        self.max_grad_norm = float(max_grad_norm)
        self.client_noise = client_noise
        #: The run's secret noise key, set by the backend before each local training
        #: (``fedgen.privacy.noise_key``); None seeds the noise from the round seed.
        self.noise_key: bytes | None = None

    def noise_for(self, client_id: int) -> float:
        """The sigma client ``client_id`` trains with."""
        if self.client_noise is None:
            return self.noise_multiplier
        return self.client_noise.get(client_id, self.noise_multiplier)

    def open(self, task: Task, generator: torch.Generator) -> LocalTraining:
        return DpSgdTraining(self, task, generator)


def module_problems(task: Task) -> list[str]:
    """Opacus's ``ModuleValidator`` on every private-data module, plus the task's own
    checks: each problem with its fix."""
    problems = []
    for name in task.private_data_modules():
        if name not in task.modules:
            problems.append(
                f"{type(task).__name__}.private_data_modules names {name!r}, not a module of "
                f"the task (modules: {sorted(task.modules)})"
            )
            continue
        for err in ModuleValidator.validate(task.modules[name], strict=False):
            problems.append(
                f"task module {name!r}: Opacus cannot make it private: {_first_sentence(err)}; "
                "fix: replace BatchNorm with GroupNorm or LayerNorm (Opacus's "
                "ModuleValidator.fix does this), and other listed layers with their DP versions"
            )
    problems.extend(task.privacy_problems())
    return problems


def attach_dpsgd(
    task: Task,
    noise_multiplier: float,
    max_grad_norm: float,
    client_noise: dict[int, float] | None = None,
) -> DpSgdEngine:
    """Attach DP-SGD to ``task``; its ``train_local`` is unchanged."""
    engine = DpSgdEngine(noise_multiplier, max_grad_norm, client_noise)
    task.privacy_engine = engine
    return engine


def _first_sentence(err: Any) -> str:
    text = str(err).strip()
    return text.split(". ")[0].rstrip(".")
