"""Arm an experiment's simulated attackers (the recipe's ``attack:`` section).

A fraction of the clients, chosen from the root seed (so a resumed run, a pool
worker and a deployed client all agree on who attacks), run the registered
adversary ``attack.kind``: a data poisoner (``fedgen.data.poison``) replaces their
shards; an update poisoner (``fedgen.transforms.adversary``) becomes the first step
of the update pipeline, acting on their updates only. The run folder records the
attackers (``attackers.json``) so reports and benchmarks can mark them.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np

from fedgen.config import AttackConfig
from fedgen.data.client_data import ClientData
from fedgen.data.poison import DataPoisoner
from fedgen.errors import ConfigError
from fedgen.params import ParamsError, validate_params
from fedgen.registry import ADVERSARIES
from fedgen.seeding import derive_seed
from fedgen.transforms.adversary import UpdatePoisoner
from fedgen.transforms.base import UpdateTransform


def choose_attackers(client_ids: Sequence[int], fraction: float, seed: int) -> frozenset[int]:
    """``round(fraction * N)`` (halves up) of ``client_ids``, drawn from the root ``seed``."""
    k = int(np.floor(fraction * len(client_ids) + 0.5))
    rng = np.random.default_rng(derive_seed(seed, "attack"))
    return frozenset(int(c) for c in rng.choice(sorted(client_ids), size=k, replace=False))


def arm_attack(
    cfg: AttackConfig,
    clients: list[Any],
    transforms: list[UpdateTransform | None],
    seed: int,
    centralized: bool,
    problems: list[str],
) -> tuple[list[Any], list[UpdateTransform | None], frozenset[int]]:
    """The clients and transforms with the attack in place, and who attacks.

    Problems (an unknown kind, bad params, a data attack on non-image data, centralized
    mode) are appended to ``problems`` and leave the experiment unarmed.
    """
    try:
        cls = ADVERSARIES.get(cfg.kind)
        params = validate_params(cls, cfg.params, "attack.params")
    except ParamsError as exc:
        problems.extend(exc.problems)
        return clients, transforms, frozenset()
    except ConfigError as exc:
        problems.append(f"attack.kind: {exc}")
        return clients, transforms, frozenset()
    if centralized:
        problems.append(
            "attack: federation.centralized=true pools all data in one client, so there are "
            "no malicious clients to simulate; remove the attack section"
        )
        return clients, transforms, frozenset()
    attackers = choose_attackers([c.client_id for c in clients], cfg.fraction, seed)
    adversary = cls(**params.model_dump())
    if isinstance(adversary, DataPoisoner):
        if not all(isinstance(c, ClientData) for c in clients):
            problems.append(
                f"attack.kind: {cfg.kind} poisons labelled images, but this data is not "
                "images; use an update attack (sign_flip, scaling, gaussian, free_rider)"
            )
            return clients, transforms, frozenset()
        armed = [adversary.poison(c) if c.client_id in attackers else c for c in clients]
        return armed, transforms, attackers
    assert isinstance(adversary, UpdatePoisoner)
    adversary.bind(attackers)
    return clients, [adversary, *transforms], attackers
