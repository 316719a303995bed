"""Membership inference against a trained generative task: members vs. held-out real images.

Runs every attack the task exposes what it needs for, on the same seeded,
equal-sized sets of members (the clients' training images) and non-members
(held-out real images of the same distribution, the test split):

- ``logan``: the discriminator's logit (white-box; ``ConditionalGan``), Hayes et al. 2019;
- ``elbo``: the evidence lower bound (white-box; ``ConditionalVae``), Hilprecht et al. 2019;
- ``ganleaks``: minus the distance to the closest synthetic sample of the same
  class (full black-box; any task), Chen et al. 2020.

Each is reported as ROC AUC and TPR at 1% FPR (``roc.py``).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field

import torch

from fedgen.attacks.elbo import elbo_scores
from fedgen.attacks.gan_leaks import distance_to_synthetic_scores
from fedgen.attacks.logan import discriminator_scores
from fedgen.attacks.roc import RocCurve, membership_figures, roc_curve
from fedgen.data.dataset import ImageDataset
from fedgen.errors import ConfigError
from fedgen.tasks.base import Task
from fedgen.tasks.gan import ConditionalGan
from fedgen.tasks.vae import ConditionalVae


@dataclass(frozen=True)
class LabelledImages:
    """Float images ``(N, C, H, W)`` in [0, 1] and their int64 labels ``(N,)``."""

    images: torch.Tensor
    labels: torch.Tensor

    def __len__(self) -> int:
        return int(self.labels.shape[0])


@dataclass
class MembershipResult:
    """Figures (``{attack}_auc``, ``{attack}_tpr_at_1pct_fpr``, counts) and each attack's ROC."""

    figures: dict[str, float]
    curves: dict[str, RocCurve] = field(default_factory=dict)
    notes: list[str] = field(default_factory=list)


def draw_candidates(
    members: ImageDataset, nonmembers: ImageDataset, n: int | None, generator: torch.Generator
) -> tuple[LabelledImages, LabelledImages]:
    """``n`` random members and ``n`` random non-members (``None``: as many as both allow, <= 1000).

    Raises ``ConfigError`` if ``n`` exceeds either set.
    """
    available = min(len(members), len(nonmembers))
    if available == 0:
        raise ConfigError("membership inference needs at least one member and one non-member")
    if n is None:
        n = min(1000, available)
    if not 1 <= n <= available:
        raise ConfigError(
            f"asked for {n} members and {n} non-members but only {len(members)} members and "
            f"{len(nonmembers)} held-out images exist; pass n <= {available}"
        )

    def pick(data: ImageDataset) -> LabelledImages:
        rows = torch.randperm(len(data), generator=generator)[:n]
        return LabelledImages(data.images[rows].float().div(255.0), data.labels[rows])

    return pick(members), pick(nonmembers)


def membership_attack(
    task: Task,
    members: LabelledImages,
    nonmembers: LabelledImages,
    generator: torch.Generator,
    samples_per_class: int = 1000,
    embed: Callable[[torch.Tensor], torch.Tensor] | None = None,
    white_box: bool = True,
) -> MembershipResult:
    """Score ``members`` and ``nonmembers`` with every applicable attack on the loaded ``task``.

    ``generator`` seeds the black-box attack's samples and the ELBO's draws.
    ``white_box=False`` runs only the black-box attack (e.g. when the
    discriminator stayed on the clients and the server never had it).
    """
    result = MembershipResult(figures={"members": len(members), "nonmembers": len(nonmembers)})

    both = LabelledImages(
        torch.cat([members.images, nonmembers.images]),
        torch.cat([members.labels, nonmembers.labels]),
    )
    n = len(members)

    def add(name: str, scores: torch.Tensor) -> None:
        # Members and non-members are scored in one call: the black-box attack then
        # measures both against the same synthetic samples.
        result.curves[name] = roc_curve(scores[:n], scores[n:])
        result.figures.update(membership_figures(scores[:n], scores[n:], name))

    if white_box and isinstance(task, ConditionalGan):
        add("logan", discriminator_scores(task.modules["discriminator"], both.images, both.labels))
    elif white_box and isinstance(task, ConditionalVae):
        enc, dec = task.modules["encoder"], task.modules["decoder"]
        add("elbo", elbo_scores(enc, dec, both.images, both.labels, generator))
    else:
        result.notes.append(
            f"no white-box attack for {type(task).__name__}: only the black-box one ran"
        )

    def sample(labels: torch.Tensor) -> torch.Tensor:
        return task.sample(labels, generator)

    add(
        "ganleaks",
        distance_to_synthetic_scores(sample, both.images, both.labels, samples_per_class, embed),
    )
    return result
