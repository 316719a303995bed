"""Secure aggregation: SecAgg (Bonawitz et al. 2017) and SecAgg+ (Bell et al. 2020).

One idea per module: ``fixed_point`` (Z_(2^k) encoding), ``shamir`` (t-of-n
sharing), ``keys`` (X25519 + HKDF), ``prg`` (AES-CTR mask expansion),
``share_encryption`` (AES-GCM bound to round/sender/receiver), ``graph``
(full or Harary neighbour graph), ``messages`` and ``channel`` (the wire),
``client`` and ``server`` (the two halves), ``protocol`` (one round end to end)
and ``transform`` (the registered ``"secagg"`` pipeline entry).
"""

from fedgen.transforms.secagg.config import SecAggConfig, SecAggPlan
from fedgen.transforms.secagg.errors import (
    MalformedMessageError,
    SecAggConfigError,
    SecAggError,
    SecAggRoundFailedError,
    SecAggSecurityWarning,
    ShareTamperedError,
)
from fedgen.transforms.secagg.protocol import SecureSum, secure_aggregate, simulate_dropouts
from fedgen.transforms.secagg.transform import SecureAggregation

__all__ = [
    "MalformedMessageError",
    "SecAggConfig",
    "SecAggConfigError",
    "SecAggError",
    "SecAggPlan",
    "SecAggRoundFailedError",
    "SecAggSecurityWarning",
    "SecureAggregation",
    "SecureSum",
    "ShareTamperedError",
    "secure_aggregate",
    "simulate_dropouts",
]
