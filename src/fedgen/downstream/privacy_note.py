"""What a generator's differential privacy says about the downstream classifier.

DP is closed under post-processing (Dwork & Roth 2014, Prop. 2.1): whatever is computed
from the generator's output alone, without touching the private data again, keeps the
generator's (epsilon, delta). A classifier trained only on synthetic samples is such a
computation. The arms that also train on clients' real data are not: their real-data
part has no guarantee unless the classifier's own federation runs under DP.
"""

from __future__ import annotations

#: Arms whose training reads real client data besides the generator's samples.
READS_REAL = {"real", "topup", "server_finetune"}


def privacy_note(arm: str, epsilon: float | None, delta: float | None) -> str:
    """One sentence on what protects the data behind ``arm``'s classifier."""
    if arm.startswith("one_shot"):
        return (
            "one-shot: each client's generator is trained without DP, so the classifier "
            "trained on their samples has no DP guarantee"
        )
    if epsilon is None:
        return "the generator was trained without DP: no guarantee carries over"
    inherited = (
        f"the synthetic samples, and whatever is computed from them alone, inherit the "
        f"generator's ({epsilon:.3g}, {delta:g})-DP by post-processing"
    )
    if arm == "real":
        return "reads no synthetic data; trained on real client data without DP: no guarantee"
    return (
        inherited + "; this arm also trains on the clients' real data without DP, so that "
        "part is not covered"
    )


def synthetic_only_note(epsilon: float | None, delta: float | None) -> str | None:
    """The guarantee of a classifier trained on the generator's samples only, if any."""
    if epsilon is None:
        return None
    return (
        f"a classifier trained only on this generator's samples (TSTR) is ({epsilon:.3g}, "
        f"{delta:g})-DP by post-processing, for the unit of privacy the generator protected"
    )
