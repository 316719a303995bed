"""Privacy accounting: a thin layer over Opacus's accountants, never a hand-written one.

Every DP mechanism in fedgen is a Poisson-subsampled Gaussian mechanism: client-level
DP-FedAvg samples clients with rate q and noises the clipped sum with multiplier z
(McMahan et al. 2018); DP-SGD samples examples the same way (Abadi et al. 2016). The
privacy spent by T such steps is what Opacus's ``RDPAccountant`` (Mironov 2017;
Mironov, Talwar & Zhang 2019) or ``PRVAccountant`` (Gopi, Lee & Wutschitz 2021)
reports; calibration is Opacus's ``get_noise_multiplier``. This module only checks
inputs, keeps the accountant's history in checkpoints, and turns library errors into
messages that say what to change.
"""

from __future__ import annotations

import contextlib
import functools
import math
import warnings
from collections.abc import Iterator
from typing import TYPE_CHECKING, Any

from fedgen.privacy.errors import PrivacyConfigError

if TYPE_CHECKING:
    from opacus.accountants.accountant import IAccountant

# Opacus is imported inside the functions: it takes seconds to load (scipy), and
# every fedgen command and worker process imports this module through the registry.

ACCOUNTANTS = ("rdp", "prv")


@contextlib.contextmanager
def _quiet_inner_rdp(accountant: str) -> Iterator[None]:
    """Silence RDP's "optimal order is the largest alpha" inside the PRV accountant.

    Opacus's PRV accountant sizes its numeric domain with an RDP bound; that bound being
    loose is not the epsilon PRV reports, so the warning says nothing a user can act on.
    Under the RDP accountant it is kept: there it means the reported bound is loose.
    """
    with warnings.catch_warnings():
        if accountant == "prv":
            warnings.filterwarnings("ignore", message="Optimal order is the largest alpha")
        yield


def as_number(value: Any) -> Any:
    """``value`` as a float if it is a number or a numeric string, else unchanged.

    YAML reads ``1e-5`` (no dot) as a string; a recipe should not fail on that.
    """
    if isinstance(value, bool) or value is None:
        return value
    try:
        return float(value)
    except (TypeError, ValueError):
        return value


def budget_problems(
    *,
    epsilon: float | None = None,
    delta: float | None = None,
    noise_multiplier: float | None = None,
    sample_rate: float | None = None,
    steps: int | None = None,
    accountant: str | None = None,
    where: str = "",
) -> list[str]:
    """Every problem with these accounting inputs (empty when all are valid).

    ``where`` prefixes each message with the config key holding the values
    (e.g. ``"dpsgd."``), so a message names exactly what to edit.
    """
    problems: list[str] = []
    for name, value in (
        ("epsilon", epsilon),
        ("delta", delta),
        ("noise_multiplier", noise_multiplier),
    ):
        if value is not None and not isinstance(value, int | float):
            problems.append(f"{where}{name}={value!r}: must be a number")
    if problems:
        return problems
    if epsilon is not None and not (epsilon > 0 and math.isfinite(epsilon)):
        problems.append(
            f"{where}epsilon={epsilon}: epsilon must be a finite number > 0 (e.g. 10, 3 or 1); "
            "to train without differential privacy remove the DP settings instead"
        )
    if delta is not None and not 0 < delta < 1:
        problems.append(
            f"{where}delta={delta}: delta must be in (0, 1), and well below 1/(number of "
            "records protected) (e.g. 1e-5)"
        )
    if noise_multiplier is not None and not (
        noise_multiplier > 0 and math.isfinite(noise_multiplier)
    ):
        problems.append(
            f"{where}noise_multiplier={noise_multiplier}: must be a finite number > 0 "
            "(or leave it unset and give epsilon to have it calibrated)"
        )
    if sample_rate is not None and not 0 < sample_rate <= 1:
        problems.append(f"{where}sample rate {sample_rate}: must be in (0, 1]")
    if steps is not None and steps < 1:
        problems.append(f"{where}steps {steps}: must be >= 1")
    if accountant is not None and accountant not in ACCOUNTANTS:
        problems.append(f"{where}accountant={accountant!r}: choose one of {', '.join(ACCOUNTANTS)}")
    return problems


def _raise_if(problems: list[str]) -> None:
    if problems:
        raise PrivacyConfigError(problems)


def compute_epsilon(
    noise_multiplier: float,
    sample_rate: float,
    steps: int,
    delta: float,
    accountant: str = "rdp",
) -> float:
    """Epsilon after ``steps`` Poisson-subsampled Gaussian steps, from Opacus's accountant."""
    _raise_if(
        budget_problems(
            noise_multiplier=noise_multiplier,
            sample_rate=sample_rate,
            steps=steps,
            delta=delta,
            accountant=accountant,
        )
    )
    acc = PrivacyAccountant(accountant)
    acc.step(noise_multiplier, sample_rate, steps)
    return acc.epsilon(delta)


def calibrate_noise(
    epsilon: float,
    sample_rate: float,
    steps: int,
    delta: float,
    accountant: str = "rdp",
) -> float:
    """The smallest noise multiplier (to Opacus's tolerance) that keeps ``steps`` steps
    within ``(epsilon, delta)``.

    Raises:
        PrivacyConfigError: for invalid inputs, or when no multiplier up to Opacus's
            ceiling (1e6) meets the budget.
    """
    _raise_if(
        budget_problems(
            epsilon=epsilon,
            sample_rate=sample_rate,
            steps=steps,
            delta=delta,
            accountant=accountant,
        )
    )
    try:
        return _calibrated(epsilon, sample_rate, steps, delta, accountant)
    except (ValueError, OverflowError, RuntimeError) as exc:
        raise PrivacyConfigError(
            [
                f"epsilon={epsilon}, delta={delta} cannot be met for {steps} step(s) at sample "
                f"rate {sample_rate:g} with any noise multiplier ({exc}); raise epsilon or "
                "delta, or lower the number of rounds/steps or the sample rate"
            ]
        ) from None


@functools.lru_cache(maxsize=4096)
def _calibrated(
    epsilon: float, sample_rate: float, steps: int, delta: float, accountant: str
) -> float:
    """Opacus's search, remembered: it takes seconds (its RDP orders are pure Python), and
    clients with equal shards and every experiment built in one process ask again. RDP's
    "optimal order is the largest alpha" warning is therefore given once per process."""
    from opacus.accountants.utils import get_noise_multiplier

    with _quiet_inner_rdp(accountant):
        z = get_noise_multiplier(
            target_epsilon=epsilon,
            target_delta=delta,
            sample_rate=sample_rate,
            steps=steps,
            accountant=accountant,
        )
    return float(z)


class PrivacyAccountant:
    """Privacy spent over one run, as an Opacus accountant's history of steps.

    Args:
        mechanism: ``"rdp"`` (Renyi DP, fast, slightly loose) or ``"prv"`` (privacy
            random variables, tighter, slower).
    """

    def __init__(self, mechanism: str = "rdp") -> None:
        _raise_if(budget_problems(accountant=mechanism))
        self.mechanism = mechanism
        #: ``(noise_multiplier, sample_rate, steps)`` runs, Opacus's own history form.
        #: Kept here, and Opacus's accountant made only when an epsilon is asked for:
        #: importing Opacus costs about 4 s of CPU (torch.distributed, sympy), which a
        #: deployed client paid on every message for an accountant it never reads.
        self._history: list[tuple[float, float, int]] = []
        self._acc: IAccountant | None = None

    @property
    def steps(self) -> int:
        """Number of mechanism steps recorded."""
        return sum(int(n) for _, _, n in self._history)

    def step(self, noise_multiplier: float, sample_rate: float, steps: int = 1) -> None:
        """Record ``steps`` steps of the subsampled Gaussian mechanism."""
        if steps <= 0:
            return
        history = self._history
        if history and history[-1][0] == noise_multiplier and history[-1][1] == sample_rate:
            z, q, n = history[-1]
            history[-1] = (z, q, n + steps)
        else:
            history.append((float(noise_multiplier), float(sample_rate), int(steps)))

    def epsilon(self, delta: float) -> float:
        """Epsilon spent so far at ``delta`` (0 before any step)."""
        if not self._history:
            return 0.0
        if self._acc is None:
            from opacus.accountants import create_accountant

            self._acc = create_accountant(mechanism=self.mechanism)
        self._acc.history = list(self._history)
        with _quiet_inner_rdp(self.mechanism):
            return float(self._acc.get_epsilon(delta=delta))

    def epsilon_after(
        self, delta: float, noise_multiplier: float, sample_rate: float, steps: int = 1
    ) -> float:
        """Epsilon if ``steps`` more steps were taken (the state is left unchanged)."""
        saved = list(self._history)
        try:
            self.step(noise_multiplier, sample_rate, steps)
            return self.epsilon(delta)
        finally:
            self._history = saved

    def state_dict(self) -> dict[str, Any]:
        return {"mechanism": self.mechanism, "history": [list(h) for h in self._history]}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        if state.get("mechanism") != self.mechanism:
            raise PrivacyConfigError(
                [
                    f"the checkpoint was accounted with {state.get('mechanism')!r}, this run "
                    f"uses {self.mechanism!r}; resume with the run folder's own config"
                ]
            )
        self._history = [(float(z), float(q), int(n)) for z, q, n in state["history"]]
