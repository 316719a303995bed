"""Membership inference against a classifier by its loss (Yeom et al. 2018).

A model fits its training examples better than unseen ones, so minus the
cross-entropy of an example under its true label scores "member". Measured on the
same kind of sets as the generator's attacks (``membership.py``): members are the
clients' real training images, non-members the held-out test split; reported as ROC
AUC and TPR at 1% FPR (``roc.py``).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from fedgen.attacks.membership import LabelledImages
from fedgen.attacks.roc import membership_figures


@torch.no_grad()
def loss_scores(model: nn.Module, data: LabelledImages, batch_size: int = 1000) -> torch.Tensor:
    """Minus the cross-entropy of every example under its label, shape ``(N,)``."""
    model.eval()
    out = [
        -F.cross_entropy(
            model(data.images[i : i + batch_size]),
            data.labels[i : i + batch_size],
            reduction="none",
        )
        for i in range(0, len(data), batch_size)
    ]
    return torch.cat(out) if out else torch.empty(0)


def classifier_membership(
    model: nn.Module, members: LabelledImages, nonmembers: LabelledImages
) -> dict[str, float]:
    """``loss_auc`` and ``loss_tpr_at_1pct_fpr`` of the loss attack on ``model``."""
    return membership_figures(loss_scores(model, members), loss_scores(model, nonmembers), "loss")
