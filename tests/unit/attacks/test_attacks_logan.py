"""The LOGAN score is the discriminator's logit on the image in its own range."""

from __future__ import annotations

import torch

from fedgen.attacks.logan import discriminator_scores
from fedgen.tasks.gan import ConditionalGan, GanParams


def test_scores_are_the_logits_in_chunks_and_the_mode_is_restored(mnist_splits):
    task = ConditionalGan(GanParams(discriminator_width=8), 10, (1, 28, 28), seed=0)
    D = task.modules["discriminator"].train()
    x, y = mnist_splits[0].images[:7].float() / 255, mnist_splits[0].labels[:7]
    scores = discriminator_scores(D, x, y, batch_size=3)
    with torch.no_grad():
        torch.testing.assert_close(scores, D(x * 2 - 1, y))
    assert D.training
