"""Gradient inversion: reconstruct a client's private batch from the update it sent.

"Inverting Gradients -- How easy is it to break privacy in federated
learning?" (Geiping, Bauermeister, Dröge & Moeller, NeurIPS 2020): start from
random dummy images, and move them with Adam (on the sign of the gradient, as
the paper) so that the gradient they produce has the highest cosine
similarity with the observed one, plus a total-variation prior that favours
natural images; images are kept in [0, 1] (the paper's box constraint). The
step size drops tenfold at 3/8, 5/8 and 7/8 of the iterations. The L2 match
of "Deep Leakage from Gradients" (Zhu, Liu & Han, NeurIPS 2019) is an option.

Labels are known: for a conditional GAN they are an input of the
discriminator the attacker differentiates, and a projection discriminator's
embedding gradient is non-zero exactly on the rows of the classes present in
the batch, so an honest-but-curious server reads them off the update anyway.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

import torch

from fedgen.attacks.observed_update import GradientTarget
from fedgen.errors import ConfigError


@dataclass(frozen=True)
class InversionConfig:
    """Settings of the attack. ``restarts`` runs from fresh random images; the restart
    with the lowest final gradient distance is kept (the attacker cannot see the
    originals, so it cannot choose by PSNR)."""

    iterations: int = 300
    lr: float = 0.1
    tv_weight: float = 1e-2
    distance: Literal["cosine", "l2"] = "cosine"
    restarts: int = 1
    signed: bool = True

    def __post_init__(self) -> None:
        if self.iterations < 1 or self.restarts < 1:
            raise ConfigError(
                f"iterations and restarts must be >= 1, got {self.iterations} and {self.restarts}"
            )
        if self.lr <= 0 or self.tv_weight < 0:
            raise ConfigError(f"need lr > 0 and tv_weight >= 0, got {self.lr}, {self.tv_weight}")
        if self.distance not in ("cosine", "l2"):
            raise ConfigError(f"distance must be 'cosine' or 'l2', got {self.distance!r}")


@dataclass(frozen=True)
class Reconstruction:
    """Images ``(M, C, H, W)`` in [0, 1] and the gradient distance they reached."""

    images: torch.Tensor
    gradient_distance: float


def total_variation(images: torch.Tensor) -> torch.Tensor:
    """Mean absolute difference of vertically and horizontally adjacent pixels (a scalar)."""
    dy = (images[:, :, 1:, :] - images[:, :, :-1, :]).abs().mean()
    dx = (images[:, :, :, 1:] - images[:, :, :, :-1]).abs().mean()
    return dx + dy


def gradient_distance(
    dummy: list[torch.Tensor], observed: list[torch.Tensor], kind: str
) -> torch.Tensor:
    """``1 - cos(dummy, observed)`` over all tensors jointly, or the summed squared L2 distance."""
    pairs = list(zip(dummy, observed, strict=True))
    if kind == "l2":
        return torch.stack([((d - o) ** 2).sum() for d, o in pairs]).sum()
    dot = torch.stack([(d * o).sum() for d, o in pairs]).sum()
    dummy_norm = torch.stack([d.pow(2).sum() for d in dummy]).sum().sqrt()
    observed_norm = torch.stack([o.pow(2).sum() for o in observed]).sum().sqrt()
    return 1 - dot / (dummy_norm * observed_norm + 1e-12)


def invert_gradients(
    target: GradientTarget,
    observed: torch.Tensor,
    labels: torch.Tensor,
    image_shape: tuple[int, int, int],
    generator: torch.Generator,
    config: InversionConfig | None = None,
    groups: int = 1,
) -> Reconstruction:
    """Images whose gradient under ``target`` best matches the flat ``observed`` gradient.

    Args:
        observed: flat gradient (or a defended view of it), ``(num_params,)``.
        labels: int64 ``(M,)``, one per image to reconstruct.
        groups: the observed update is a sum of ``groups`` per-client mean
            gradients over equal slices of the ``M`` images (a secure sum);
            the dummy gradient is formed the same way.

    Raises ``ConfigError`` when ``observed`` does not fit the target's parameters.
    """
    config = config or InversionConfig()
    sizes = [p.numel() for p in target.parameters]
    if observed.dim() != 1 or observed.numel() != sum(sizes):
        raise ConfigError(
            f"the observed update has {observed.numel()} values but {target.name} has "
            f"{sum(sizes)} parameters; pass the flat gradient of the same model"
        )
    if groups < 1 or labels.shape[0] % groups:
        raise ConfigError(f"{labels.shape[0]} labels cannot be split into {groups} equal groups")
    observed_parts = [
        part.view_as(p) for part, p in zip(observed.split(sizes), target.parameters, strict=True)
    ]
    label_groups = labels.chunk(groups)

    def dummy_gradient(images: torch.Tensor) -> list[torch.Tensor]:
        pairs = zip(images.chunk(groups), label_groups, strict=True)
        loss = torch.stack([target.loss(x, y) for x, y in pairs]).sum()
        return list(torch.autograd.grad(loss, target.parameters, create_graph=True))

    best: Reconstruction | None = None
    milestones = [int(config.iterations * f) for f in (3 / 8, 5 / 8, 7 / 8)]
    for _ in range(config.restarts):
        shape = (labels.shape[0], *image_shape)
        images = torch.rand(shape, generator=generator).requires_grad_(True)
        opt = torch.optim.Adam([images], lr=config.lr)
        schedule = torch.optim.lr_scheduler.MultiStepLR(opt, milestones, gamma=0.1)
        for _ in range(config.iterations):
            opt.zero_grad(set_to_none=True)
            match = gradient_distance(dummy_gradient(images), observed_parts, config.distance)
            objective = match + config.tv_weight * total_variation(images)
            (grad,) = torch.autograd.grad(objective, [images])
            images.grad = grad.sign() if config.signed else grad
            opt.step()
            schedule.step()
            with torch.no_grad():
                images.clamp_(0.0, 1.0)
        final = float(
            gradient_distance(dummy_gradient(images), observed_parts, config.distance).detach()
        )
        if best is None or final < best.gradient_distance:
            best = Reconstruction(images.detach().clone(), final)
    assert best is not None  # restarts >= 1 is checked by InversionConfig
    return best
