"""Leakage attacks a user runs against their own trained model.

- Membership inference: LOGAN's discriminator score (``logan``), the cVAE's
  ELBO (``elbo``) and GAN-Leaks' distance to the closest synthetic sample
  (``gan_leaks``), judged by ROC AUC and TPR at 1% FPR (``roc``).
- Gradient inversion of one client's update (``inversion``, Geiping et al.
  2020) as the server sees it with no defence, with DP, or under secure
  aggregation (``observed_update``), judged by PSNR/SSIM (``image_similarity``).
- ``run_attack`` runs either against a run folder; ``attack_command`` is its CLI.
"""

from __future__ import annotations

import importlib
from typing import Any

# Exports load on first use (PEP 562): the CLI imports ``attack_command`` from this
# package, and every ``fedgen`` call should not pay for torch models and scipy.
_EXPORTS = {
    "CandidateDraw": "membership",
    "InversionConfig": "inversion",
    "RocCurve": "roc",
    "draw_candidates": "membership",
    "invert_gradients": "inversion",
    "match_reconstructions": "image_similarity",
    "membership_attack": "membership",
    "psnr": "image_similarity",
    "roc_curve": "roc",
    "run_attack": "run",
    "ssim": "image_similarity",
}


def __getattr__(name: str) -> Any:
    if name not in _EXPORTS:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    return getattr(importlib.import_module(f"{__name__}.{_EXPORTS[name]}"), name)


__all__ = [
    "CandidateDraw",
    "InversionConfig",
    "RocCurve",
    "draw_candidates",
    "invert_gradients",
    "match_reconstructions",
    "membership_attack",
    "psnr",
    "roc_curve",
    "run_attack",
    "ssim",
]
