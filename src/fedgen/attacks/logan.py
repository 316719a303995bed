"""White-box membership inference with the discriminator's score (LOGAN).

Hayes, Melis, Danezis & De Cristofaro 2019, "LOGAN: Membership Inference
Attacks Against Generative Models" (PoPETs): a discriminator that overfits
scores its training images as more "real" than unseen images of the same
distribution, so the attacker with the discriminator's weights calls the
highest-scoring candidates members. Here the score is the conditional
discriminator's logit ``D(x, y)`` on the candidate's true class.
"""

from __future__ import annotations

import torch
from torch import nn


@torch.no_grad()
def discriminator_scores(
    discriminator: nn.Module, images: torch.Tensor, labels: torch.Tensor, batch_size: int = 500
) -> torch.Tensor:
    """Logits ``D(x, y)`` of images ``(N, C, H, W)`` in [0, 1]; higher means "member". ``(N,)``.

    The discriminator sees images in [-1, 1], the generator's range, as during
    training (``fedgen.tasks.gan``).
    """
    was_training = discriminator.training
    discriminator.eval()
    chunks = [
        discriminator(images[i : i + batch_size] * 2 - 1, labels[i : i + batch_size])
        for i in range(0, images.shape[0], batch_size)
    ]
    discriminator.train(was_training)
    return torch.cat(chunks).float()
