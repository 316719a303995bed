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

from fedgen.tasks.functional import ModuleTensors
from fedgen.tasks.functional_optim import counted_adam_init, counted_adam_step

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


class FunctionalAdams:
    """A table task's optimizers (one Adam per ``optimizer_groups`` entry) for its
    functional step: counted Adam states (``counted_adam_step``) whose tensors map one to
    one onto the private tensors above, so a client's kept moments and step count move
    between the sequential and the vectorized path unchanged.

    States are ``{group: {"step", "exp_avg", "exp_avg_sq"}}`` with the moments keyed
    ``<module>.<tensor>``, as ``zero_state`` names them.
    """

    def __init__(
        self,
        groups: dict[str, list[str]],
        *,
        keep: bool,
        betas: tuple[float, float],
        weight_decay: float,
    ) -> None:
        self.groups = groups
        self.keep = keep
        self.betas = betas
        self.weight_decay = weight_decay

    def _flat(self, group: str, tensors: ModuleTensors) -> dict[str, torch.Tensor]:
        return {f"{m}.{k}": v for m in self.groups[group] for k, v in tensors[m].items()}

    def init(self, tensors: ModuleTensors) -> dict[str, Any]:
        """Fresh states of every group (step 0, zero moments)."""
        return {g: counted_adam_init(self._flat(g, tensors)) for g in self.groups}

    def step(
        self,
        group: str,
        tensors: ModuleTensors,
        grads: ModuleTensors,
        state: dict[str, Any],
        lr: float,
    ) -> tuple[ModuleTensors, dict[str, Any]]:
        """One Adam step of ``group``'s modules: their new tensors and the new state."""
        new, new_state = counted_adam_step(
            self._flat(group, tensors),
            self._flat(group, grads),
            state[group],
            lr,
            self.betas,
            weight_decay=self.weight_decay,
        )
        out: ModuleTensors = {m: {} for m in self.groups[group]}
        for name, value in new.items():
            module, _, key = name.partition(".")
            out[module][key] = value
        return out, {**state, group: new_state}

    def kept(self, state: dict[str, Any]) -> dict[str, torch.Tensor]:
        """The private tensors of ``state`` (none without ``keep_optimizer``)."""
        if not self.keep:
            return {}
        out: dict[str, torch.Tensor] = {}
        for group in self.groups:
            st = state[group]
            for name in st["exp_avg"]:
                out[f"{PREFIX}{group}/{name}/step"] = st["step"]
                out[f"{PREFIX}{group}/{name}/exp_avg"] = st["exp_avg"][name]
                out[f"{PREFIX}{group}/{name}/exp_avg_sq"] = st["exp_avg_sq"][name]
        return out

    def resume(self, state: dict[str, Any], kept: dict[str, torch.Tensor]) -> dict[str, Any]:
        """``state`` with the kept tensors loaded (one step count per group: torch keeps
        one per parameter, all equal, since a group's parameters step together)."""
        if not self.keep:
            return state
        out = {}
        for group in self.groups:
            names = list(state[group]["exp_avg"])
            out[group] = {
                "step": kept[f"{PREFIX}{group}/{names[0]}/step"],
                "exp_avg": {n: kept[f"{PREFIX}{group}/{n}/exp_avg"] for n in names},
                "exp_avg_sq": {n: kept[f"{PREFIX}{group}/{n}/exp_avg_sq"] for n in names},
            }
        return out
