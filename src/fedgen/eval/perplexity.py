"""Text quality: per-client held-out perplexity, the figure federated LM papers report.

Each client keeps a held-out part of its own text (``fedgen.data.text``); the
model's perplexity on it is ``exp(mean next-token negative log-likelihood)``,
from the task's own loss (``Task.nll``). Reported: the mean over clients, the
worst decile (the 90th percentile over clients: the clients the federation
serves worst) and the pooled perplexity over every held-out token. With
``personalize_steps``, the final evaluation also fine-tunes the global model on
each client's own training text for that many steps (from the same seed every
time) and reports the personalized perplexities on its held-out text: what a
client gets by adapting the federation's model locally.
"""

from __future__ import annotations

import math
from typing import Any

import numpy as np
import torch

from fedgen.config import EvalConfig
from fedgen.registry import EVALUATORS
from fedgen.seeding import torch_generator


class PerplexityEvaluator:
    """Held-out perplexity of a text task on every client's own held-out text.

    Args:
        clients: the clients' text data, each with ``client_id`` and
            ``heldout_windows(block_size)`` giving ``(x, y)`` windows of held-out tokens.
        max_windows: at most this many windows per client (the first ones), to bound time.
    """

    def __init__(
        self,
        clients: list[Any],
        max_windows: int = 64,
        personalize_steps: int = 0,
        seed: int = 0,
        tokens: str = "token",
    ) -> None:
        if not clients:
            raise ValueError("perplexity needs at least one client with held-out text")
        self.clients = clients
        #: What one token is (perplexities of different tokenizers do not compare).
        self.tokens = tokens
        self.max_windows = max_windows
        self.personalize_steps = personalize_steps
        self.seed = seed

    def nll_per_client(self, task: Any) -> dict[int, tuple[float, int]]:
        """Summed held-out NLL (nats) and token count of ``task`` for each client."""
        block, out = task.params.block_size, {}
        for c in self.clients:
            x, y = c.heldout_windows(block)
            if len(x) == 0:
                raise ValueError(
                    f"client {c.client_id} holds fewer than {block + 1} held-out tokens; raise "
                    "the held-out fraction or the text per client, or lower block_size"
                )
            out[c.client_id] = task.nll(x[: self.max_windows], y[: self.max_windows])
        return out

    def evaluate_task(self, task: Any, generator: torch.Generator, final: bool) -> dict[str, float]:
        """Mean, worst-decile and pooled held-out perplexity (``generator``, ``final``: unused,
        perplexity draws nothing and costs the same every round)."""
        figures = _summarise("perplexity", self.nll_per_client(task))
        if final and self.personalize_steps > 0:
            figures.update(_summarise("perplexity_personalized", self.personalized_nll(task)))
        return figures

    def own_model_figures(self, task: Any, load_own: Any) -> dict[str, float]:
        """``perplexity_personal*``: each client scored with its own model, loaded into
        ``task`` by ``load_own(client_id)`` (the federated tensors and its private ones:
        FedPer's personal layers or adapters), as its samples are drawn. The caller
        loads the model it evaluates again afterwards."""
        block, nll = task.params.block_size, {}
        for c in self.clients:
            load_own(c.client_id)
            x, y = c.heldout_windows(block)
            nll[c.client_id] = task.nll(x[: self.max_windows], y[: self.max_windows])
        return _summarise("perplexity_personal", nll)

    def personalized_nll(self, task: Any) -> dict[int, tuple[float, int]]:
        """Held-out NLL of each client after fine-tuning the loaded model on its own text.

        The loaded state is restored after each client, so every client starts from the
        same global model; each fine-tunes with a generator seeded by its id.
        """
        start = {**task.federated_state(), **task.private_state()}
        block, out = task.params.block_size, {}
        try:
            for c in self.clients:
                gen = torch_generator(self.seed, "personalize", c.client_id)
                task.fine_tune(c, self.personalize_steps, gen)  # as the client trains
                x, y = c.heldout_windows(block)
                out[c.client_id] = task.nll(x[: self.max_windows], y[: self.max_windows])
                task.load_state(start)
        finally:
            task.load_state(start)
        return out

    def describe(self) -> dict[str, str]:
        """What each key was computed on."""
        where = (
            f"the held-out text each of {len(self.clients)} clients keeps (up to "
            f"{self.max_windows} windows of the task's context length each), per "
            f"{self.tokens} (not comparable across tokenizers)"
        )
        return {
            "perplexity": f"exp(mean next-token NLL) per client, mean over clients, on {where}",
            "perplexity_worst_decile": f"the 90th percentile over clients of it, on {where}",
            "perplexity_pooled": f"exp(mean next-token NLL) over all tokens pooled, on {where}",
            "perplexity_personal": "the same with each client's own model (the federated "
            f"tensors and its private ones, e.g. personal layers), on {where}",
            "perplexity_personalized": f"the same after {self.personalize_steps} local "
            f"fine-tuning steps of the final global model on each client's own training "
            f"text, on {where}",
        }


def _summarise(key: str, nll: dict[int, tuple[float, int]]) -> dict[str, float]:
    """Mean over clients, worst decile (90th percentile) and pooled perplexity."""
    values = np.array([math.exp(total / count) for total, count in nll.values()])
    pooled = sum(t for t, _ in nll.values()) / sum(c for _, c in nll.values())
    return {
        key: float(values.mean()),
        f"{key}_worst_decile": float(np.quantile(values, 0.9)),
        f"{key}_pooled": math.exp(pooled),
    }


@EVALUATORS.register("text")
def text_evaluator(data: Any, *, seed: int, settings: EvalConfig) -> PerplexityEvaluator:
    """The text evaluator of a run: ``data.clients`` hold each client's held-out text."""
    tokenizer = getattr(getattr(data, "tokenizer", None), "name", None)
    return PerplexityEvaluator(
        list(data.clients),
        personalize_steps=settings.personalize_steps,
        seed=seed,
        tokens={None: "token", "bytes": "byte"}.get(tokenizer, f"{tokenizer} token"),
    )
