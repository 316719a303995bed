"""Adam and SGD as pure functions of one client's tensors and optimizer state.

The arithmetic of ``torch.optim.Adam`` and ``torch.optim.SGD`` (single-tensor CPU
path; Adam's L2 ``weight_decay`` joins the gradient as in torch) written out-of-place,
so that it runs under ``torch.func.vmap`` and the stacked optimizer state of many
clients (one ``exp_avg`` per client and tensor) updates in one call. ``step`` is the
shared 1-based step count: the clients of a vectorized group step together, so their
bias corrections are plain floats, as in torch.
"""

from __future__ import annotations

import math
from typing import Any

import torch

Tensors = dict[str, torch.Tensor]


def adam_init(params: Tensors) -> dict[str, Tensors]:
    """Fresh Adam moments for ``params`` (zeros, as ``torch.optim.Adam`` starts)."""
    return {
        "exp_avg": {k: torch.zeros_like(v) for k, v in params.items()},
        "exp_avg_sq": {k: torch.zeros_like(v) for k, v in params.items()},
    }


def _moments(
    param: torch.Tensor,
    grad: torch.Tensor,
    state: dict[str, Any],
    key: str,
    betas: tuple[float, float],
    weight_decay: float,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Adam's new first and second moments of one tensor (torch's coupled L2 decay)."""
    beta1, beta2 = betas
    if weight_decay != 0:
        grad = grad.add(param, alpha=weight_decay)
    exp_avg = torch.lerp(state["exp_avg"][key], grad, 1 - beta1)
    # addcmul out of place: vmap has no batching rule for addcmul_ (it would loop).
    exp_avg_sq = torch.addcmul(state["exp_avg_sq"][key] * beta2, grad, grad, value=1 - beta2)
    return exp_avg, exp_avg_sq


def adam_step(
    params: Tensors,
    grads: Tensors,
    state: dict[str, Tensors],
    step: int,
    lr: float,
    betas: tuple[float, float],
    eps: float = 1e-8,
    weight_decay: float = 0.0,
) -> tuple[Tensors, dict[str, Tensors]]:
    """One Adam step (Kingma & Ba 2015) as ``torch.optim.Adam`` takes it; new params, state.

    ``weight_decay`` is torch's (coupled L2): ``weight_decay * param`` joins the gradient
    before the moments, not AdamW's decoupled decay.
    """
    beta1, beta2 = betas
    bias_correction1 = 1 - beta1**step
    step_size = lr / bias_correction1
    bias_correction2_sqrt = math.sqrt(1 - beta2**step)
    new_params: Tensors = {}
    exp_avgs: Tensors = {}
    exp_avg_sqs: Tensors = {}
    for key, param in params.items():
        exp_avg, exp_avg_sq = _moments(param, grads[key], state, key, betas, weight_decay)
        # In place on a fresh temporary: fewer (clients x model)-sized allocations.
        denom = exp_avg_sq.sqrt().div_(bias_correction2_sqrt).add_(eps)
        new_params[key] = torch.addcdiv(param, exp_avg, denom, value=-step_size)
        exp_avgs[key], exp_avg_sqs[key] = exp_avg, exp_avg_sq
    return new_params, {"exp_avg": exp_avgs, "exp_avg_sq": exp_avg_sqs}


def sgd_init(params: Tensors) -> dict[str, Tensors]:
    """Fresh SGD state: a zero momentum buffer per tensor (unused without momentum)."""
    return {"momentum": {k: torch.zeros_like(v) for k, v in params.items()}}


def sgd_step(
    params: Tensors,
    grads: Tensors,
    state: dict[str, Tensors],
    step: int,
    lr: float,
    momentum: float = 0.0,
    dampening: float = 0.0,
    nesterov: bool = False,
) -> tuple[Tensors, dict[str, Tensors]]:
    """One SGD step as ``torch.optim.SGD`` takes it (heavy-ball or Nesterov momentum).

    torch's first step sets the buffer to the gradient itself (no dampening); later ones
    decay it, which ``step`` (1-based) tells apart.
    """
    new_params: Tensors = {}
    buffers: Tensors = {}
    for key, param in params.items():
        grad = grads[key]
        direction = grad
        if momentum != 0.0:
            if step == 1:
                buf = grad
            else:
                buf = torch.add(state["momentum"][key] * momentum, grad, alpha=1 - dampening)
            direction = torch.add(grad, buf, alpha=momentum) if nesterov else buf
            buffers[key] = buf
        else:
            buffers[key] = state["momentum"][key]
        new_params[key] = torch.add(param, direction, alpha=-lr)
    return new_params, {"momentum": buffers}


def counted_adam_init(params: Tensors) -> dict[str, torch.Tensor | Tensors]:
    """Fresh Adam state with its own step count (``step`` 0, as a fresh
    ``torch.optim.Adam``): for clients whose state, and so whose count, outlives a round."""
    return {"step": torch.zeros(()), **adam_init(params)}


def counted_adam_step(
    params: Tensors,
    grads: Tensors,
    state: dict[str, Any],
    lr: float,
    betas: tuple[float, float],
    eps: float = 1e-8,
    weight_decay: float = 0.0,
) -> tuple[Tensors, dict[str, Any]]:
    """``adam_step`` counting steps in ``state["step"]`` instead of taking a shared count.

    Clients that keep their Adam state between rounds have taken different numbers of
    steps, so each bias correction is a tensor: a scalar per client under ``vmap``, or
    ``(clients,)`` in a batched step (broadcast over each parameter's own dimensions).
    Computed in float64 and rounded to float32 where torch rounds its Python floats.
    """
    beta1, beta2 = betas
    count = state["step"] + 1
    exact = count.double()
    step_size = (lr / (1 - beta1**exact)).float()
    bias_correction2_sqrt = torch.sqrt(1 - beta2**exact).float()
    new_params: Tensors = {}
    exp_avgs: Tensors = {}
    exp_avg_sqs: Tensors = {}
    for key, param in params.items():
        exp_avg, exp_avg_sq = _moments(param, grads[key], state, key, betas, weight_decay)
        shape = count.shape + (1,) * (param.dim() - count.dim())
        denom = exp_avg_sq.sqrt().div_(bias_correction2_sqrt.reshape(shape)).add_(eps)
        # torch: param + (-step_size * exp_avg) / denom (addcdiv's order).
        new_params[key] = param - step_size.reshape(shape) * exp_avg / denom
        exp_avgs[key], exp_avg_sqs[key] = exp_avg, exp_avg_sq
    return new_params, {"step": count, "exp_avg": exp_avgs, "exp_avg_sq": exp_avg_sqs}
