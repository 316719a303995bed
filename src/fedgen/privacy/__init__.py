"""Differential privacy: accounting (Opacus accountants), client-level budgets, DP-SGD.

Client-level DP-FedAvg is a pair of update transforms (``fedgen.transforms.clip`` and
``fedgen.transforms.dp``); sample-level DP-SGD wraps a task's local training with
Opacus (``fedgen.privacy.dpsgd``). ``fedgen.privacy.budget`` tracks what a run has
spent; ``fedgen.assembly.privacy`` checks an experiment's DP before round 1.
"""

from fedgen.privacy.accounting import (
    ACCOUNTANTS,
    PrivacyAccountant,
    budget_problems,
    calibrate_noise,
    compute_epsilon,
)
from fedgen.privacy.errors import PrivacyConfigError

__all__ = [
    "ACCOUNTANTS",
    "PrivacyAccountant",
    "PrivacyConfigError",
    "budget_problems",
    "calibrate_noise",
    "compute_epsilon",
]
