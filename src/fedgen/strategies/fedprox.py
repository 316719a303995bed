"""FedProx (Li et al. 2020, "Federated Optimization in Heterogeneous Networks", MLSys).

The server side is FedAvg's; each client adds the proximal term ``mu/2 ||w - w_t||^2``
to its local objective, so that local training on skewed data does not wander far from
the global weights ``w_t``. The strategy tells every client ``mu`` in its instruction
(``config["proximal_mu"]``); the local-training path opens
``fedgen.engine.proximal.proximal_term`` around the task's training, so every task (and
the split trainer) sees the global weights without a line of its own.

For a GAN the term anchors the generator and the discriminator alike, each to its own
global weights: it damps the client drift of both networks (the discriminator, trained
on one client's skewed labels, drifts most). As the term adds to the gradient, Adam's
per-coordinate scaling applies to it too, as in common FedProx implementations with
adaptive local optimizers; with SGD it is exactly the paper's term.
"""

from __future__ import annotations

from typing import Any

from pydantic import Field

from fedgen.errors import ConfigError
from fedgen.registry import STRATEGIES
from fedgen.strategies.fedavg import FedAvg
from fedgen.strategies.moving_average import EmaWarmup

#: The key of a client instruction's config that carries mu.
PROXIMAL_MU = "proximal_mu"


@STRATEGIES.register("fedprox")
class FedProx(FedAvg):
    """FedAvg whose clients minimise their loss plus ``mu/2 ||w - w_t||^2`` (Li et al. 2020).

    Args:
        mu: the proximal weight (the paper tries 0.001 to 1; 0 is FedAvg).
        The others: FedAvg's.
    """

    class Params(FedAvg.Params):
        """FedAvg's params and ``mu``."""

        mu: float = Field(0.01, ge=0, allow_inf_nan=False)

    def __init__(
        self,
        mu: float = 0.01,
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
        if not 0 <= mu < float("inf"):
            raise ConfigError(f"strategy fedprox: mu must be a finite number >= 0, got {mu}")
        self.mu = mu

    def client_config(self, round: int) -> dict[str, Any]:
        return {PROXIMAL_MU: self.mu}
