"""What a generator's differential privacy says about the downstream classifier.

DP is closed under post-processing (Dwork & Roth 2014, Prop. 2.1): whatever is computed
from the generator's output alone, without touching the private data again, keeps the
generator's (epsilon, delta). A classifier trained only on synthetic samples is such a
computation. The arms that also train on clients' real data are not: their real-data
part has no guarantee unless the classifier's own federation runs under DP.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

#: Arms whose training reads real client data besides the generator's samples.
READS_REAL = {"real", "topup", "server_finetune", "one_shot_finetune"}


def privacy_note(
    arm: str, epsilon: float | None, delta: float | None, own: Mapping[str, Any] | None = None
) -> str:
    """One sentence on what protects the data behind ``arm``'s classifier.

    ``own`` is the classifier federation's own DP (``PrivacyAccounting.describe``), when
    its recipe had some: it covers the real-data part the generator's guarantee does not.
    """
    if arm == "one_shot_finetune":
        return (
            "trains on the clients' real data and on samples of their one-shot generators, "
            "which were trained and sent without DP: no DP guarantee"
        )
    if arm.startswith("one_shot"):
        return (
            "one-shot: each client's generator is trained without DP, so the classifier "
            "trained on their samples has no DP guarantee"
        )
    own_eps = own.get("epsilon") if own else None
    if own_eps is not None:
        assert own is not None
        own_delta = own.get("delta")
        unit = own.get("privacy_unit", "client")
        text = (
            f"its own federation is ({own_eps:.3g}, {own_delta:g})-DP at the {unit} level "
            "for the real data it reads"
        )
        if arm != "real" and epsilon is not None:
            text += (
                f"; with the generator's ({epsilon:.3g}, {delta:g})-DP on the same clients, "
                f"basic composition bounds the whole at ({epsilon + own_eps:.3g}, "
                f"{(delta or 0) + (own_delta or 0):g}) when both protect the same unit"
            )
        elif arm != "real":
            text += "; the synthetic samples come from a generator trained without DP"
        return text
    if epsilon is None:
        return "the generator was trained without DP: no guarantee carries over"
    if arm == "real":
        return "reads no synthetic data; trained on real client data without DP: no guarantee"
    if arm == "synthetic":
        return (
            f"trained on the generator's samples alone: ({epsilon:.3g}, {delta:g})-DP by "
            "post-processing"
        )
    return (
        f"the synthetic samples, and whatever is computed from them alone, inherit the "
        f"generator's ({epsilon:.3g}, {delta:g})-DP by post-processing; this arm also "
        "trains on the clients' real data without DP, so that part is not covered"
    )


def synthetic_only_note(epsilon: float | None, delta: float | None) -> str | None:
    """The guarantee of a classifier trained on the generator's samples only, if any."""
    if epsilon is None:
        return None
    return (
        f"a classifier trained only on this generator's samples (TSTR) is ({epsilon:.3g}, "
        f"{delta:g})-DP by post-processing, for the unit of privacy the generator protected"
    )
