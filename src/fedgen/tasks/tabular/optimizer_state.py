"""Adam's moments as named tensors, so a client can keep them between rounds.

A federated client that builds a fresh Adam every round restarts its moment
estimates (and the bias correction) each time: at 10 local steps a round, CTGAN
never leaves Adam's warm-up. Kept as the client's private state, the moments
resume where they stopped, as one optimizer run over all rounds would; the server
never sees them. They are named ``optimizer/<group>/<module>.<tensor>/<field>``
(``step``, ``exp_avg``, ``exp_avg_sq``), so checkpoints store and check them like
any private tensor and a resumed run continues bit-identically.

A state of zeros (step 0) is exactly a fresh Adam's: torch initialises the same
three tensors to zeros on the first step.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch
from torch import nn

#: Every optimizer-state key starts with this (module tensor keys never hold a ``/``).
PREFIX = "optimizer/"
FIELDS = ("step", "exp_avg", "exp_avg_sq")

NamedParameters = Sequence[tuple[str, nn.Parameter]]


def zero_state(group: str, parameters: NamedParameters) -> dict[str, torch.Tensor]:
    """A fresh Adam's state of ``parameters`` (``[(name, parameter)]``) under ``group``."""
    out = {}
    for name, param in parameters:
        out[f"{PREFIX}{group}/{name}/step"] = torch.zeros(())
        out[f"{PREFIX}{group}/{name}/exp_avg"] = torch.zeros_like(param.detach())
        out[f"{PREFIX}{group}/{name}/exp_avg_sq"] = torch.zeros_like(param.detach())
    return out


def adam(
    group: str, parameters: NamedParameters, state: dict[str, torch.Tensor], **options: Any
) -> torch.optim.Adam:
    """An Adam over ``parameters`` resuming from ``state`` (its keys under ``group``; a
    parameter without them starts fresh)."""
    opt = torch.optim.Adam([p for _, p in parameters], **options)
    saved = opt.state_dict()
    for i, (name, _) in enumerate(parameters):
        keys = [f"{PREFIX}{group}/{name}/{f}" for f in FIELDS]
        if all(k in state for k in keys):
            saved["state"][i] = {f: state[k].clone() for f, k in zip(FIELDS, keys, strict=True)}
    opt.load_state_dict(saved)
    return opt


def export(
    group: str, parameters: NamedParameters, opt: torch.optim.Adam
) -> dict[str, torch.Tensor]:
    """``opt``'s state as named tensors (zeros for a parameter it never stepped)."""
    out = zero_state(group, parameters)
    for name, param in parameters:
        for field, value in opt.state.get(param, {}).items():
            out[f"{PREFIX}{group}/{name}/{field}"] = value.detach().clone()
    return out
