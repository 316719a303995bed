"""Membership inference against a trained generative task: members vs. held-out real images.

Runs every attack the task exposes what it needs for, on the same seeded,
equal-sized sets of members (the clients' training images) and non-members
(held-out real images of the same distribution, the test split, with the members'
label mix):

- ``logan``: the discriminator's logit (white-box; ``ConditionalGan``), Hayes et al. 2019;
- ``elbo``: the evidence lower bound (white-box; ``ConditionalVae``), Hilprecht et al. 2019;
- ``ganleaks``: minus the distance to the closest synthetic sample of the same
  class (full black-box; any task), Chen et al. 2020.

Each is reported as ROC AUC and TPR at 1% FPR (``roc.py``).
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Iterator
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

log = logging.getLogger(__name__)


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


#: What the non-members are, for the records of every attack drawn by ``draw_candidates``.
NONMEMBERS_DESCRIPTION = (
    "held-out real images (the test split), class-matched: as many of each label as the "
    "members drawn"
)


@dataclass(frozen=True)
class CandidateDraw:
    """Members and class-matched non-members; ``notes`` says where a class fell short.

    Unpacks as ``(members, nonmembers)``.
    """

    members: LabelledImages
    nonmembers: LabelledImages
    notes: tuple[str, ...] = ()

    def __iter__(self) -> Iterator[LabelledImages]:
        return iter((self.members, self.nonmembers))


def draw_candidates(
    members: ImageDataset, nonmembers: ImageDataset, n: int | None, generator: torch.Generator
) -> CandidateDraw:
    """``n`` random members and as many non-members of the same labels (``None``: as many
    as both sets allow, <= 1000).

    Non-members are class-matched: for every label, as many as the members drawn of it.
    The attacks' scores differ by class (a digit's ink, the generator's fit of it), so
    with another label mix (one client's shard under label skew against the whole test
    split) the AUC would measure the mix, not leakage. When the held-out set has fewer
    images of a label than the members drawn, all of them are used and the members of
    that label cut to match; ``notes`` (and the log) say so.

    Raises ``ConfigError`` if ``n`` exceeds either set, or no label of the members
    drawn has held-out images.
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
    member_rows = torch.randperm(len(members), generator=generator)[:n]
    member_labels = members.labels[member_rows]
    kept: list[torch.Tensor] = []
    matched: list[torch.Tensor] = []
    notes: list[str] = []
    for cls in torch.unique(member_labels).tolist():  # increasing: a seed gives one draw
        mine = member_rows[member_labels == cls]
        pool = torch.nonzero(nonmembers.labels == cls).squeeze(1)
        k = min(len(mine), len(pool))
        if k < len(mine):
            name = members.class_names[cls] if cls < len(members.class_names) else cls
            notes.append(
                f"class {name}: only {len(pool)} held-out images for {len(mine)} members "
                f"drawn, so {len(mine) - k} of those members were left out"
            )
        kept.append(mine[:k])
        matched.append(pool[torch.randperm(len(pool), generator=generator)[:k]])
    member_rows, nonmember_rows = torch.cat(kept), torch.cat(matched)
    if len(member_rows) == 0:
        raise ConfigError(
            "the held-out set has no image of any label the members hold; attack members "
            "of classes the test split has"
        )
    for note in notes:
        log.warning("membership candidates: %s", note)

    def pick(data: ImageDataset, rows: torch.Tensor) -> LabelledImages:
        return LabelledImages(data.images[rows].float().div(255.0), data.labels[rows])

    return CandidateDraw(pick(members, member_rows), pick(nonmembers, nonmember_rows), tuple(notes))


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
