"""The report's downstream section renders downstream.json's arms and stays out otherwise."""

from __future__ import annotations

from fedgen.report.downstream_section import downstream_section


def arm(accuracy: float, worst: float, privacy: str) -> dict:
    return {
        "accuracy": accuracy,
        "worst_class_accuracy": worst,
        "rounds": 20,
        "bytes_total": 3_000_000,
        "seconds": 75.0,
        "membership": {"loss_auc": 0.512},
        "privacy": privacy,
    }


def test_section_lists_every_arm_with_its_figures_and_privacy():
    record = {
        "generator_run": "runs/g",
        "generator_task": "cvae",
        "generator_membership": {"elbo_auc": 0.61, "members": 1000},
        "synthetic_only_privacy": "a classifier trained only on ... (3, 1e-05)-DP",
        "arms": {
            "real": arm(0.6512, 0.0, "no guarantee"),
            "topup": arm(0.7401, 0.3125, "inherit <b>"),
        },
    }

    page = downstream_section(record)

    assert page.startswith("<h2>Downstream classifier</h2>")
    assert "FedAvg on real data only" in page and "topped up" in page
    assert "65.1%" in page and "31.2%" in page and "0.512" in page
    assert "elbo_auc 0.610" in page and "(3, 1e-05)-DP" in page
    assert "inherit &lt;b&gt;" in page  # text from the file is escaped


def test_no_record_or_no_arms_renders_nothing():
    assert downstream_section(None) == ""
    assert downstream_section({"arms": {}}) == ""


def test_each_arms_auc_shows_the_untrained_reference_and_the_note_replaces_chance():
    # A record written with the untrained classifier's AUC as the chance reference.
    topup = arm(0.7401, 0.3125, "inherit")
    topup["membership"]["untrained_loss_auc"] = 0.537
    record = {"membership_note": "no exact chance baseline", "arms": {"topup": topup}}

    page = downstream_section(record)

    assert "0.512 (untrained 0.537)" in page
    assert "no exact chance baseline" in page and "0.5 is chance" not in page
