"""What every text task shares: built from a text DataSpec, next-token loss, held-out NLL.

A text task maps token ids (B, T) to next-token logits (B, T, vocab) with ``logits``;
the loss it trains on and the negative log-likelihood perplexity is computed from
(``fedgen.eval.perplexity``) are then one computation, written once here.
"""

from __future__ import annotations

from abc import abstractmethod
from collections.abc import Iterable
from typing import Any, ClassVar

import torch
import torch.nn.functional as F

from fedgen.modality import Conditioning, DataSpec, Modality
from fedgen.tasks.base import Task, TaskParams


class TextTask(Task):
    """Base of the prompted text tasks (``byte_gpt``, ``lm_lora``)."""

    modality = Modality.TEXT
    conditioning = Conditioning.PROMPT
    #: The name the task is registered under, for messages.
    task_name: ClassVar[str] = "text task"
    #: Windows per forward pass in ``nll`` (a large vocabulary wants small batches).
    nll_batch: ClassVar[int] = 64

    def __init__(self, params: TaskParams, vocab_size: int, seed: int) -> None:
        self.vocab_size = vocab_size
        super().__init__(params, 0, (0, 0, 0), seed)

    @classmethod
    def from_spec(cls, params: TaskParams, spec: DataSpec, seed: int) -> Task:
        if spec.modality != Modality.TEXT or not spec.vocab_size:
            raise ValueError(
                f"task {cls.task_name} generates text, but the data is {spec.modality}; "
                "choose a text source (e.g. data.sources=[fortunes])"
            )
        cls.check_spec(params, spec)
        return cls(params, spec.vocab_size, seed)

    @classmethod
    def check_spec(cls, params: TaskParams, spec: DataSpec) -> None:
        """Raise ``ConfigError`` if text data ``spec`` does not fit the task (default: fits)."""

    def privacy_problems(self) -> list[str]:
        # Text tasks draw their batches themselves, not through ``local_training``, so an
        # attached DP-SGD engine would never see them: refuse rather than pretend.
        return [
            f"task {self.task_name} does not train through DP-SGD yet; drop the dpsgd "
            "section (client-level DP with transforms clip and client_dp works)"
        ]

    def prompts(self, condition: Any) -> list[str]:
        """``sample``'s ``condition`` as its list of prompts.

        Raises ``TypeError`` for a bare string, which would otherwise be iterated as one
        prompt per character.
        """
        if isinstance(condition, str | bytes):
            raise TypeError(
                f"task {self.task_name} samples one continuation per prompt: pass a list of "
                f"prompts, e.g. [{condition!r}], not a bare string"
            )
        if not isinstance(condition, Iterable):
            raise TypeError(
                f"task {self.task_name} samples from a list of prompts, got "
                f"{type(condition).__name__}"
            )
        return list(condition)

    @abstractmethod
    def logits(self, x: torch.Tensor) -> torch.Tensor:
        """Next-token logits (B, T, vocab) of token ids ``x`` (B, T)."""

    def loss(self, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        """Mean next-token cross-entropy in nats of ``y`` given ``x`` (both (B, T))."""
        logits = self.logits(x)
        return F.cross_entropy(logits.reshape(-1, logits.shape[-1]), y.reshape(-1))

    @torch.no_grad()
    def nll(self, x: torch.Tensor, y: torch.Tensor) -> tuple[float, int]:
        """Summed negative log-likelihood (nats) of targets ``y`` given ``x`` (both (N, T)),
        and how many tokens that is: perplexity is ``exp(sum / tokens)``."""
        for module in self.modules.values():
            module.eval()
        total = 0.0
        for start in range(0, len(x), self.nll_batch):
            logits = self.logits(x[start : start + self.nll_batch])  # (b, T, vocab)
            target = y[start : start + self.nll_batch]
            total += float(
                F.cross_entropy(
                    logits.reshape(-1, logits.shape[-1]), target.reshape(-1), reduction="sum"
                )
            )
        return total, y.numel()
