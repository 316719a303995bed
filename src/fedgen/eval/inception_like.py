"""An Inception-like score computed with our real-data classifier instead of Inception.

Salimans, Goodfellow, Zaremba, Cheung, Radford, Chen, "Improved Techniques for
Training GANs", NeurIPS 2016: ``exp(E_x KL(p(y|x) || p(y)))``. The formula is
theirs; the label model is a ``SmallCNN`` trained on the real training split, so
the number is comparable only between runs that use the same classifier.
"""

from __future__ import annotations

import torch


def inception_like_score(probs: torch.Tensor, splits: int = 10) -> tuple[float, float]:
    """Mean and standard deviation over ``splits`` chunks of ``exp(mean KL(p(y|x) || p(y)))``.

    ``probs`` are class probabilities ``(N, C)`` (rows summing to 1). The score lies
    in ``[1, C]``: 1 for identical predictions, ``C`` for confident, balanced ones.

    Raises:
        ValueError: not a 2-D tensor, fewer rows than splits, or rows not summing to 1.
    """
    if probs.dim() != 2:
        raise ValueError(f"probs must be (N, C), got shape {tuple(probs.shape)}")
    if splits < 1 or probs.shape[0] < splits:
        raise ValueError(
            f"need 1 <= splits <= N, got splits={splits} for N={probs.shape[0]}; "
            "pass more samples or fewer splits"
        )
    p = probs.detach().cpu().double()
    if (p < 0).any() or not torch.allclose(p.sum(dim=1), torch.ones(p.shape[0], dtype=p.dtype)):
        raise ValueError("probs rows must be non-negative and sum to 1; apply softmax first")
    scores = []
    for chunk in torch.tensor_split(p, splits):
        marginal = chunk.mean(dim=0, keepdim=True)  # (1, C)
        # xlogy makes 0 * log 0 = 0, so one-hot rows are fine.
        kl = (torch.special.xlogy(chunk, chunk) - torch.special.xlogy(chunk, marginal)).sum(dim=1)
        scores.append(torch.exp(kl.mean()))
    values = torch.stack(scores)
    return float(values.mean()), float(values.std(unbiased=False))
