"""Fault injection on the client side of a simulated round.

A recipe's ``faults:`` section (``fedgen.config.FaultsConfig``) makes sampled
clients crash before or after training, straggle, or return a corrupted
update, at given rates. Which client suffers which fault is drawn from that
client's round seed, so a resumed run meets exactly the faults an
uninterrupted one met, and any backend sees the same ones. The server side
has no special case: it must survive these the way it survives real faults.
"""

from __future__ import annotations

import random
import time
from dataclasses import dataclass

import torch

from fedgen.config import FAULT_KINDS, FaultsConfig
from fedgen.errors import FedgenError
from fedgen.seeding import derive_seed
from fedgen.types import StateDict


class InjectedFault(FedgenError):
    """A crash the recipe's ``faults:`` section asked for."""


@dataclass(frozen=True)
class FaultPlan:
    """Per-kind probabilities; picklable, so workers of any backend can draw from it."""

    probabilities: tuple[tuple[str, float], ...]
    straggle_seconds: float

    @classmethod
    def from_config(cls, cfg: FaultsConfig | None) -> FaultPlan | None:
        """The plan for ``cfg``, or None when it injects nothing."""
        if cfg is None:
            return None
        probs = tuple((k, float(getattr(cfg, k))) for k in FAULT_KINDS)
        if not any(p > 0 for _, p in probs):
            return None
        return cls(probs, cfg.straggle_seconds)

    def draw(self, client_seed: int) -> str | None:
        """The fault this client meets this round (its seed is per round and client)."""
        u = random.Random(derive_seed(client_seed, "fault")).random()
        for kind, p in self.probabilities:
            if u < p:
                return kind
            u -= p
        return None

    def before_training(self, fault: str | None) -> None:
        """Crash or straggle before the client trains."""
        if fault == "crash_before":
            raise InjectedFault("injected crash before training")
        if fault == "straggle":
            time.sleep(self.straggle_seconds)

    def after_training(self, fault: str | None) -> None:
        """Crash after training (the work is lost)."""
        if fault == "crash_after":
            raise InjectedFault("injected crash after training")

    def corrupt(self, fault: str | None, update: StateDict) -> StateDict:
        """The update a faulty client sends instead of ``update``."""
        if fault not in ("nan", "wrong_shape", "oversized"):
            return update
        key = next((k for k, v in update.items() if v.is_floating_point() and v.numel()), None)
        if key is None:
            return update
        out = dict(update)
        if fault == "nan":
            # Contiguous: a channels-last weight (huscf_cgan's channels_last) has no flat view.
            bad = out[key].clone(memory_format=torch.contiguous_format)
            bad.view(-1)[0] = float("nan")
            out[key] = bad
        elif fault == "wrong_shape":
            out[key] = torch.zeros(out[key].numel() + 1, dtype=out[key].dtype)
        else:  # oversized: far past any sane norm bound
            out = {k: v + 1e6 if v.is_floating_point() else v for k, v in out.items()}
        return out
