"""Ditto (Li, Hu, Beirami and Smith 2021, "Ditto: Fair and Robust Federated Learning
Through Personalization", ICML).

Each client keeps a personal model ``v_k`` beside the federation's global model ``w``.
Every round it trains the global model as FedAvg does (its update goes to the server as
FedAvg's) and, separately, its personal model on ``F_k(v) + lambda/2 ||v - w_t||^2``,
where ``w_t`` is the global model it received: ``lambda`` 0 is local training alone,
large ``lambda`` pulls ``v`` onto the global model. The personal model never leaves the
client (it lives in the client's private state, checkpointed with it).

The server side is FedAvg's, unchanged, so whatever composes with FedAvg composes with
Ditto: secure aggregation (a sum is enough) and client-level DP (the released update is
FedAvg's). The strategy tells each client ``lambda`` and the personal steps in its
instruction (``config["ditto_lambda"]``, ``config["ditto_steps"]``); the local-training
path (``fedgen.engine.ditto``) runs the personal step after the global one, with the
proximal term of ``fedgen.engine.proximal``, so every task gets it without a line of its
own. For a GAN the personal model is a whole GAN: the generator and the discriminator
each have a personal copy, each pulled toward its own global weights.
"""

from __future__ import annotations

from typing import Any

from pydantic import Field

from fedgen.errors import ConfigError
from fedgen.registry import STRATEGIES
from fedgen.strategies.fedavg import FedAvg
from fedgen.strategies.moving_average import EmaWarmup

#: Keys of a client instruction's config: the personal objective's weight and steps.
DITTO_LAMBDA = "ditto_lambda"
DITTO_STEPS = "ditto_steps"


@STRATEGIES.register("ditto")
class Ditto(FedAvg):
    """FedAvg whose clients also train a personal model toward the global one (Li et al.
    2021).

    Args:
        lam: the weight ``lambda`` of ``lambda/2 ||v - w_t||^2`` (the paper tries 0.05
            to 2; 0 trains each personal model on its client's data alone).
        personal_steps: local steps of the personal model per round; None: as many as
            the global model's (the paper's ``s`` local iterations).
        The others: FedAvg's.
    """

    class Params(FedAvg.Params):
        """FedAvg's params, ``lam`` and ``personal_steps``."""

        lam: float = Field(0.1, ge=0, allow_inf_nan=False)
        personal_steps: int | None = Field(None, ge=1)

    def __init__(
        self,
        lam: float = 0.1,
        personal_steps: int | None = None,
        fraction: float = 1.0,
        min_clients: int = 2,
        server_lr: float = 1.0,
        weighted: bool = True,
        ema_decay: float | None = None,
        ema_warmup: EmaWarmup = False,
        sampling: str = "fixed",
        fixed_denominator: bool = False,
        root_seed: int = 0,
    ) -> None:
        super().__init__(
            fraction=fraction,
            min_clients=min_clients,
            server_lr=server_lr,
            weighted=weighted,
            ema_decay=ema_decay,
            ema_warmup=ema_warmup,
            sampling=sampling,
            fixed_denominator=fixed_denominator,
            root_seed=root_seed,
        )
        if not 0 <= lam < float("inf"):
            raise ConfigError(f"strategy ditto: lam must be a finite number >= 0, got {lam}")
        if personal_steps is not None and personal_steps < 1:
            raise ConfigError(
                f"strategy ditto: personal_steps must be >= 1 (or null: the global model's "
                f"steps), got {personal_steps}"
            )
        self.lam = lam
        self.personal_steps = personal_steps

    def client_config(self, round: int) -> dict[str, Any]:
        return {DITTO_LAMBDA: self.lam, DITTO_STEPS: self.personal_steps}
