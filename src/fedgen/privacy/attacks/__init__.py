"""Leakage attacks a user runs against their own trained model.

- Membership inference: LOGAN's discriminator score (``logan``), the cVAE's
  ELBO (``elbo``) and GAN-Leaks' distance to the closest synthetic sample
  (``gan_leaks``), judged by ROC AUC and TPR at 1% FPR (``roc``).
- Gradient inversion of one client's update (``inversion``, Geiping et al.
  2020) as the server sees it with no defence, with DP, or under secure
  aggregation (``observed_update``), judged by PSNR/SSIM (``image_similarity``).
- ``run_attack`` runs either against a run folder; ``attack_command`` is its CLI.
"""

from fedgen.privacy.attacks.image_similarity import match_reconstructions, psnr, ssim
from fedgen.privacy.attacks.inversion import InversionConfig, invert_gradients
from fedgen.privacy.attacks.membership import draw_candidates, membership_attack
from fedgen.privacy.attacks.roc import RocCurve, roc_curve
from fedgen.privacy.attacks.run import run_attack

__all__ = [
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
