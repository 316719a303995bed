"""FedProx's proximal term for any local training, without touching the task's code.

The engine opens it around a client's training (tasks know nothing of federation).

Li, Sahu, Zaheer, Sanjabi, Talwalkar and Smith 2020, "Federated Optimization in
Heterogeneous Networks" (MLSys): a client minimises ``F_k(w) + mu/2 ||w - w_t||^2``,
where ``w_t`` are the global weights it received. The term's gradient, ``mu (w -
w_t)``, is added to each anchored parameter's gradient just before every optimizer
step, through torch's global optimizer step pre-hook; so every task's local training
sees the global weights whatever optimizers it builds (the GAN's two, the VAE's one,
a language model's AdamW), as does a trainer that is not a task (split learning).

With DP-SGD the term is added after Opacus has clipped and noised the data gradient
(the hook skips Opacus's wrapper and acts on the optimizer it wraps): the term reads
no example, so the guarantee is unchanged. A backend that trains without
``torch.optim`` optimizers (functional steps) must add the term itself. The hook is
process-wide while open: one client trains at a time in a process (the sequential
backend, a pool worker, a Flower ClientApp).
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from typing import Any

import torch
from torch.optim.optimizer import register_optimizer_step_pre_hook

from fedgen.strategies.fedprox import PROXIMAL_MU
from fedgen.types import ClientInstruction, StateDict

__all__ = [
    "PROXIMAL_MU",
    "anchored_at_start",
    "anchored_parameters",
    "proximal_mu",
    "proximal_term",
]


def proximal_mu(ins: ClientInstruction) -> float:
    """The proximal weight a client's instruction carries (0 when none).

    Raises:
        ValueError: the instruction's ``proximal_mu`` is not a number.
    """
    mu = ins.config.get(PROXIMAL_MU, 0.0)
    if isinstance(mu, bool) or not isinstance(mu, int | float):
        raise ValueError(f"config {PROXIMAL_MU}={mu!r} is not a number")
    return float(mu)


def anchored_parameters(
    modules: Mapping[str, torch.nn.Module], anchor: StateDict
) -> list[tuple[torch.Tensor, torch.Tensor]]:
    """Pairs (parameter, its value in ``anchor``) for every parameter of ``modules`` named
    ``<module>.<tensor>`` in ``anchor`` (a task's federated-state keys); others are free."""
    pairs: list[tuple[torch.Tensor, torch.Tensor]] = []
    for name, module in modules.items():
        for key, value in module.state_dict(keep_vars=True).items():
            full = f"{name}.{key}"
            if full in anchor and isinstance(value, torch.nn.Parameter) and value.requires_grad:
                pairs.append((value, anchor[full]))
    return pairs


def anchored_at_start(params: Iterable[torch.Tensor]) -> list[tuple[torch.Tensor, torch.Tensor]]:
    """Pairs (parameter, a copy of its value now): for a trainer that is not a task (split
    learning), whose blocks hold the weights each client started the round from."""
    return [(p, p.detach().clone()) for p in params]


@contextmanager
def proximal_term(pairs: Sequence[tuple[torch.Tensor, torch.Tensor]], mu: float) -> Iterator[None]:
    """While open, every optimizer step first adds ``mu * (p - anchor)`` to the gradient
    of each parameter ``p`` of ``pairs`` that it steps and that has a gradient.

    ``mu`` 0 (or no pairs) installs nothing: the training is bit for bit FedAvg's.

    Raises:
        ValueError: ``mu`` is negative or not finite.
    """
    if not (mu >= 0 and mu < float("inf")):
        raise ValueError(f"proximal mu must be a finite number >= 0, got {mu}")
    if mu == 0 or not pairs:
        yield
        return
    anchors = {id(p): a.detach().to(p.dtype) for p, a in pairs}

    def add_term(optimizer: torch.optim.Optimizer, args: Any, kwargs: Any) -> None:
        # Opacus's DPOptimizer replaces p.grad by the noised clipped gradient, then steps
        # the optimizer it wraps: the term goes in there, once, after the noise.
        if hasattr(optimizer, "original_optimizer"):
            return
        with torch.no_grad():
            for group in optimizer.param_groups:
                for p in group["params"]:
                    anchor = anchors.get(id(p))
                    if anchor is not None and p.grad is not None:
                        p.grad.add_(p.detach() - anchor, alpha=mu)

    handle = register_optimizer_step_pre_hook(add_term)
    try:
        yield
    finally:
        handle.remove()
