"""The conditional GAN loss of HuSCF-GAN's networks, with an optional AC-GAN term.

The discriminator's last block returns P(real) ``(B, 1)``; with an auxiliary
classifier (``HuscfGanSpec.aux_classifier``) it returns ``(B, 1 + K)``: P(real)
then class logits. The adversarial part is the published binary cross-entropy
(non-saturating for the generator). The class part (Odena et al. 2017, AC-GAN)
is cross-entropy against the batch's labels, weighted by ``aux_weight``; it is
added where ``classify`` is set: on the real batch in the discriminator's step
and on the fakes in the generator's step. The discriminator is not asked to
classify fakes, so early fakes that do not yet look like their class do not
teach its class head noise.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F


def gan_loss(
    output: torch.Tensor,
    labels: torch.Tensor,
    target: float,
    classify: bool = False,
    aux_weight: float = 0.0,
) -> torch.Tensor:
    """Binary cross-entropy of ``output[:, 0]`` against ``target``, plus the class term."""
    p_real = output[:, :1]
    loss = F.binary_cross_entropy(p_real, torch.full_like(p_real, target))
    if classify and aux_weight > 0 and output.shape[1] > 1:
        loss = loss + aux_weight * F.cross_entropy(output[:, 1:], labels)
    return loss
