"""Server optimizers: FedAvg's mean delta used as a pseudo-gradient of a server optimizer.

Reddi, Charles, Zaheer, Garrett, Rush, Konečný, Kumar and McMahan 2021, "Adaptive
Federated Optimization" (ICLR; Algorithm 2): the round's mean delta Delta_t (the
negated pseudo-gradient) drives, per coordinate,

    m_t = beta1 m_{t-1} + (1 - beta1) Delta_t
    v_t = v_{t-1} + Delta_t^2                                        (FedAdagrad)
    v_t = v_{t-1} - (1 - beta2) Delta_t^2 sign(v_{t-1} - Delta_t^2)  (FedYogi)
    v_t = beta2 v_{t-1} + (1 - beta2) Delta_t^2                      (FedAdam)
    x_{t+1} = x_t + eta m_t / (sqrt(v_t) + tau),   v_{-1} = tau^2, m_{-1} = 0

without bias correction, as published. FedAvgM is server momentum (Hsu, Qi and Brown
2019, "Measuring the Effects of Non-Identical Data Distribution for Federated Visual
Classification"): v_t = beta v_{t-1} + Delta_t, x_{t+1} = x_t + eta v_t.

Everything else is FedAvg's: sampling, the (weighted or fixed-denominator) mean, and
so aggregation from a sum alone (secure aggregation composes) and client-level DP's
conditions (the optimizer only post-processes the noised mean: DP-FedAdam is sound
with the same clip, noise and sampling as DP-FedAvg). The moments are the strategy's
state: they are checkpointed (``state_dict``), so a resumed run steps on from them.
A round without a delta for a tensor (no client returned under the fixed denominator)
leaves that tensor and its moments as they were.

For a GAN (and any task of several networks) the server optimizer sees one flat set
of named tensors: the generator's and the discriminator's coordinates each keep their
own moments, so this is one optimizer per network with shared hyperparameters
(``server_lr``, betas, ``tau``). FedAvgM carries each network's momentum across
rounds; in a GAN the discriminator's updates flip direction as the generator moves,
so its momentum can overshoot: lower ``momentum`` if the discriminator's losses
oscillate. The adaptive rules divide each coordinate's step by its running scale, so
the generator and the discriminator move by about ``server_lr`` per coordinate each
round whatever their local learning rates; ``tau`` bounds that for coordinates that
barely move. Evaluation may still average the generator (``ema_decay``).
"""

from __future__ import annotations

from typing import Any, ClassVar

import torch
from pydantic import Field

from fedgen.errors import ConfigError
from fedgen.registry import STRATEGIES
from fedgen.strategies.fedavg import FedAvg
from fedgen.strategies.moving_average import EmaWarmup
from fedgen.types import StateDict


class ServerOptimizer(FedAvg):
    """FedAvg whose server step keeps per-tensor moments (``moments[name][key]``)."""

    #: The names of the moment buffers this optimizer keeps, e.g. ``("m", "v")``.
    buffers: ClassVar[tuple[str, ...]] = ()

    def _init_moments(self) -> None:
        self.moments: dict[str, StateDict] = {name: {} for name in self.buffers}

    def state_dict(self) -> dict[str, Any]:
        state = super().state_dict()
        state["moments"] = {
            name: {k: v.clone() for k, v in buf.items()} for name, buf in self.moments.items()
        }
        return state

    def load_state_dict(self, state: dict[str, Any]) -> None:
        rest = dict(state)
        moments = rest.pop("moments", None)
        if not isinstance(moments, dict) or set(moments) != set(self.buffers):
            raise ValueError(
                f"{type(self).__name__} needs its server optimizer moments "
                f"{list(self.buffers)} in the checkpoint; resume with the run's own config"
            )
        super().load_state_dict(rest)
        self.moments = {name: dict(moments[name]) for name in self.buffers}


@STRATEGIES.register("fedavgm")
class FedAvgM(ServerOptimizer):
    """Server momentum on FedAvg's mean delta (Hsu et al. 2019; see module docstring).

    Args:
        momentum: beta in v_t = beta v_{t-1} + Delta_t (0 is FedAvg with ``server_lr``).
        The others: FedAvg's.
    """

    buffers = ("momentum",)

    class Params(FedAvg.Params):
        """FedAvg's params and ``momentum``."""

        momentum: float = Field(0.9, ge=0, lt=1)

    def __init__(
        self,
        momentum: float = 0.9,
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
        if not 0.0 <= momentum < 1.0:
            raise ConfigError(f"strategy fedavgm: momentum must be in [0, 1), got {momentum}")
        self.momentum = momentum
        self._init_moments()

    def server_step(self, key: str, delta: torch.Tensor) -> torch.Tensor:
        buf = self.moments["momentum"]
        velocity = delta.to(torch.float64)
        if key in buf:
            velocity = self.momentum * buf[key] + velocity
        buf[key] = velocity
        return self.server_lr * velocity


class AdaptiveServerOptimizer(ServerOptimizer):
    """FedAdagrad, FedYogi and FedAdam (Reddi et al. 2021): they differ in ``second_moment``."""

    buffers = ("m", "v")

    class Params(FedAvg.Params):
        """FedAvg's params with Reddi et al.'s server defaults, the betas and ``tau``."""

        server_lr: float = Field(0.01, gt=0, allow_inf_nan=False)
        beta1: float = Field(0.9, ge=0, lt=1)
        beta2: float = Field(0.99, ge=0, lt=1)
        tau: float = Field(1e-3, gt=0, allow_inf_nan=False)

    def __init__(
        self,
        beta1: float = 0.9,
        beta2: float = 0.99,
        tau: float = 1e-3,
        fraction: float = 1.0,
        min_clients: int = 2,
        server_lr: float = 0.01,
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
        name = type(self).__name__
        for what, beta in (("beta1", beta1), ("beta2", beta2)):
            if not 0.0 <= beta < 1.0:
                raise ConfigError(f"strategy {name}: {what} must be in [0, 1), got {beta}")
        if not tau > 0:
            raise ConfigError(f"strategy {name}: tau must be > 0, got {tau}")
        self.beta1, self.beta2, self.tau = beta1, beta2, tau
        self._init_moments()

    def second_moment(self, v: torch.Tensor, squared: torch.Tensor) -> torch.Tensor:
        """v_t from v_{t-1} and Delta_t^2."""
        raise NotImplementedError

    def server_step(self, key: str, delta: torch.Tensor) -> torch.Tensor:
        d = delta.to(torch.float64)
        m_prev = self.moments["m"].get(key, torch.zeros_like(d))
        v_prev = self.moments["v"].get(key, torch.full_like(d, self.tau**2))
        m = self.beta1 * m_prev + (1 - self.beta1) * d
        v = self.second_moment(v_prev, d * d)
        self.moments["m"][key], self.moments["v"][key] = m, v
        return self.server_lr * m / (v.sqrt() + self.tau)


@STRATEGIES.register("fedadagrad")
class FedAdagrad(AdaptiveServerOptimizer):
    """v_t = v_{t-1} + Delta_t^2 (Reddi et al. 2021); ``beta2`` is unused."""

    def second_moment(self, v: torch.Tensor, squared: torch.Tensor) -> torch.Tensor:
        return v + squared


@STRATEGIES.register("fedyogi")
class FedYogi(AdaptiveServerOptimizer):
    """v_t = v_{t-1} - (1 - beta2) Delta_t^2 sign(v_{t-1} - Delta_t^2) (Reddi et al. 2021,
    after Zaheer et al. 2018's Yogi): v grows no faster than additively."""

    def second_moment(self, v: torch.Tensor, squared: torch.Tensor) -> torch.Tensor:
        return v - (1 - self.beta2) * squared * torch.sign(v - squared)


@STRATEGIES.register("fedadam")
class FedAdam(AdaptiveServerOptimizer):
    """v_t = beta2 v_{t-1} + (1 - beta2) Delta_t^2 (Reddi et al. 2021)."""

    def second_moment(self, v: torch.Tensor, squared: torch.Tensor) -> torch.Tensor:
        return self.beta2 * v + (1 - self.beta2) * squared
