"""The report's section on the downstream classifier (``downstream.json``), when a run has one.

One row per arm (real only, top-up, server fine-tuning, synthetic only, one-shot) with
the figures a reader compares (test and worst-class accuracy, rounds, bytes, time, the
membership attack's AUC) and what protects the data behind it, then the generator's own
membership figures beside them.
"""

from __future__ import annotations

import html
from typing import Any

from fedgen.report.evaluated import model_words
from fedgen.report.units import format_bytes, format_duration

#: What each arm is, in the words of the comparison.
ARMS = {
    "real": "FedAvg on real data only",
    "topup": "clients topped up with synthetic samples (GeFL)",
    "server_finetune": "server fine-tunes on synthetic samples each round",
    "synthetic": "server trains on synthetic samples only",
    "one_shot": "one-shot: each client sends a generator once (FedCVAE-Ens)",
    "one_shot_finetune": "FedAvg on real data, the server fine-tuning each round on the "
    "one-shot generators' samples",
}


def downstream_section(record: dict[str, Any] | None) -> str:
    """HTML for ``downstream.json``'s arms, or "" when the run has none."""
    if not record or not isinstance(record.get("arms"), dict) or not record["arms"]:
        return ""
    rows = []
    for arm, f in record["arms"].items():
        if not isinstance(f, dict):
            continue
        membership: dict[str, Any] = (
            f["membership"] if isinstance(f.get("membership"), dict) else {}
        )
        auc = membership.get("loss_auc")
        # The untrained classifier's AUC on the same candidates: the offset the member and
        # non-member sets show before any training (records from before it have none).
        untrained = membership.get("untrained_loss_auc")
        cells = [
            ARMS.get(arm, arm),
            _pct(f.get("accuracy")),
            _pct(f.get("worst_class_accuracy")),
            str(f.get("rounds", "-")),
            format_bytes(f["bytes_total"]) if isinstance(f.get("bytes_total"), int) else "-",
            format_duration(f["seconds"]) if isinstance(f.get("seconds"), int | float) else "-",
            (f"{auc:.3f}" if isinstance(auc, int | float) else "-")
            + (f" (untrained {untrained:.3f})" if isinstance(untrained, int | float) else ""),
            str(f.get("privacy", "")),
        ]
        rows.append("<tr>" + "".join(f"<td>{html.escape(c)}</td>" for c in cells) + "</tr>")
    head = (
        "<tr><th>arm</th><th>test accuracy</th><th>worst class</th><th>rounds</th>"
        "<th>bytes</th><th>time</th><th>membership AUC</th><th>privacy</th></tr>"
    )
    # The generator's model the samples came from (downstream.json's generator_model).
    drawn = f", {model_words(record['generator_model'])}" if "generator_model" in record else ""
    parts = [
        "<h2>Downstream classifier</h2>",
        f"<p>A SmallCNN trained with the generator of "
        f"<code>{html.escape(str(record.get('generator_run', '')))}</code> "
        f"({html.escape(str(record.get('generator_task', '')))}{html.escape(drawn)}); "
        "membership AUC: the loss "
        "attack on the classifier, clients' training images against the test split "
        + (
            f"({html.escape(str(record['membership_note']))}).</p>"
            if record.get("membership_note")
            else "(0.5 is chance).</p>"
        ),
        f"<table>{head}{''.join(rows)}</table>",
    ]
    gen = record.get("generator_membership")
    if isinstance(gen, dict):
        aucs = ", ".join(
            f"{html.escape(k)} {v:.3f}"
            for k, v in gen.items()
            if k.endswith("_auc") and isinstance(v, int | float)
        )
        parts.append(f"<p>The generator's own membership inference: {aucs}.</p>")
    if record.get("synthetic_only_privacy"):
        parts.append(
            f"<p><b>Privacy:</b> {html.escape(str(record['synthetic_only_privacy']))}.</p>"
        )
    return "".join(parts)


def _pct(value: Any) -> str:
    return f"{100 * value:.1f}%" if isinstance(value, int | float) else "-"
