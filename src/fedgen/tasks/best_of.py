"""Best-of-m sampling: a task's samples, each the best of m draws by its own scorer.

A conditional GAN releases its discriminator with its generator; keeping, of m
generator draws, the one the discriminator scores highest (discriminator rejection
sampling in its best-of-m form, Azadi et al. 2019) reads only the released model, so
under DP it is post-processing and costs no privacy. ``eval.best_of`` makes a run's
evaluations and sample grids draw this way, and ``fedgen sample --best-of`` its exports.
"""

from __future__ import annotations

from typing import Any

import torch

from fedgen.errors import ConfigError


def best_of_problems(task: Any) -> list[str]:
    """Why ``task`` cannot keep the best of several draws by its released scorer, each
    with its fix (empty: it can)."""
    if not callable(getattr(task, "sample_best_of", None)):
        return [
            f"{type(task).__name__} has no scorer of its samples, so it cannot keep the best "
            "of several draws (task cgan scores them by its discriminator); draw plainly "
            "(best_of 1)"
        ]
    problems: list[str] = task.best_of_problems()
    return problems


class BestOfSampling:
    """``task`` whose ``sample`` keeps the best of ``best_of`` draws; every other
    attribute is the task's own."""

    def __init__(self, task: Any, best_of: int) -> None:
        problems = best_of_problems(task)
        if problems:
            raise ConfigError("; ".join(problems))
        if best_of < 1:
            raise ConfigError(f"best_of must be >= 1, got {best_of}")
        self.task = task
        self.best_of = best_of

    def sample(self, labels: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
        """``best_of`` draws per label, the best kept (the task's ``sample_best_of``)."""
        images: torch.Tensor = self.task.sample_best_of(labels, generator, self.best_of)
        return images

    def __getattr__(self, name: str) -> Any:
        return getattr(self.task, name)


def keep_best_of(task: Any, m: int) -> Any:
    """``task`` itself for ``m`` 1, else ``BestOfSampling(task, m)``."""
    return task if m == 1 else BestOfSampling(task, m)


__all__ = ["BestOfSampling", "best_of_problems", "keep_best_of"]
