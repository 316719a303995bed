"""A tiny real downstream experiment through `fedgen run`, then the recipes it must refuse.

One run (module fixture) federates a small cGAN on 4 MNIST clients under client-level
DP, then trains the classifier every way (real, top-up, server fine-tuning, synthetic
only, one-shot, FedAvg with the server fine-tuning on the one-shot generators'
samples). The checks are against figures computed here from the run's own files.
"""

from __future__ import annotations

import json
import math
import shutil
from pathlib import Path

import pytest
from cli_runner import fedgen
from lock_holder import is_held
from opacus.accountants import RDPAccountant
from typer.testing import CliRunner

from fedgen.cli import app
from fedgen.config import load_config
from fedgen.downstream import DownstreamError, run_downstream
from fedgen.downstream.topup import topup_counts
from fedgen.experiment import load_run

TINY = [
    "data.sources=[mnist]",
    "data.num_clients=4",
    "data.partition.kind=dirichlet",
    "data.partition.params={alpha: 0.3}",
    "task.params={batch_size: 32, generator_width: 8, discriminator_width: 8}",
    "federation.rounds=2",
    "federation.local_steps=2",
    "backend.name=inprocess",
    "eval.every=0",
    "eval.final=false",
    "threads=1",
    "strategy.params={fraction: 0.5, min_clients: 1, weighted: false, sampling: poisson, "
    "fixed_denominator: true}",
    "transforms=[{name: clip, params: {max_norm: 0.5}}, "
    "{name: client_dp, params: {noise_multiplier: 1.5, delta: 1e-3}}]",
]
DOWNSTREAM = (
    "downstream={rounds: 2, local_steps: 3, batch_size: 32, topup_max_per_class: 20, "
    "server_steps: 2, server_samples_per_class: 10, server_epochs: 1, one_shot_steps: 3, "
    "one_shot_samples: 200, test_examples: 500, attack_candidates: 200}"
)
#: SmallCNN's parameters: what every classifier update carries (float32).
CLASSIFIER_PARAMETERS = 421_642


def sets(items: list[str]) -> list[str]:
    return [arg for item in items for arg in ("--set", item)]


@pytest.fixture(scope="module")
def run(tmp_path_factory, mnist_dir) -> Path:
    out = tmp_path_factory.mktemp("downstream") / "run"
    fedgen("run", "--no-progress", "--out", str(out), *sets([*TINY, DOWNSTREAM]))
    return out


def test_every_arm_is_measured_and_the_top_up_matches_the_partition(run, mnist_dir, monkeypatch):
    summary = json.loads((run / "summary.json").read_text())
    record = json.loads((run / "downstream.json").read_text())
    assert summary["status"] == "completed"
    assert list(record["arms"]) == [
        "real",
        "topup",
        "server_finetune",
        "synthetic",
        "one_shot",
        "one_shot_finetune",
    ]
    for arm, figures in record["arms"].items():
        assert 0.0 <= figures["worst_class_accuracy"] <= figures["accuracy"] <= 1.0, arm
        assert len(figures["per_class_accuracy"]) == 10
        assert 0.0 <= figures["membership"]["loss_auc"] <= 1.0
        assert summary[f"downstream_{arm}_accuracy"] == figures["accuracy"]
        # No exact chance baseline: the untrained reference beside every arm.
        reference = record["membership_reference"]["loss_auc"]
        assert figures["membership"]["untrained_loss_auc"] == reference
        assert summary[f"downstream_{arm}_membership_auc_untrained"] == reference
    assert "no exact chance baseline" in summary["downstream_membership_note"]
    # The top-up is what topup_counts asks of every client's label counts (ratio 1, cap 20).
    # (From the partition itself: under DP, partition.json withholds them.)
    monkeypatch.setenv("FEDGEN_DATA_DIR", str(mnist_dir))  # where the run's CLI found it
    counts = load_run(run).data.label_counts()
    expected = sum(sum(topup_counts(c, 1.0, 20)) for c in counts)
    assert record["arms"]["topup"]["synthetic_examples"] == expected > 0
    # FedAvg arms: 2 rounds of 4 clients, each sending and receiving the whole classifier.
    for arm in ("real", "topup", "server_finetune"):
        figures = record["arms"][arm]
        assert figures["rounds"] == 2
        assert figures["bytes_up"] > 2 * 4 * 4 * CLASSIFIER_PARAMETERS
        assert figures["bytes_down"] > 2 * 4 * 4 * CLASSIFIER_PARAMETERS
    # One-shot: one upload per client (a cVAE decoder), nothing downloaded.
    one_shot = record["arms"]["one_shot"]
    assert one_shot["rounds"] == 1 and one_shot["bytes_down"] == 0
    assert 4 * 4 * 100_000 < one_shot["bytes_up"] < figures["bytes_up"]
    assert one_shot["synthetic_examples"] == 200
    # FedAvg with the server fine-tuning on the one-shot ensemble: the FedAvg bytes of
    # the same rounds plus the clients' generators, sent once (the same set as one_shot).
    both = record["arms"]["one_shot_finetune"]
    assert both["rounds"] == 2 and both["synthetic_examples"] == 200
    assert both["bytes_down"] == record["arms"]["server_finetune"]["bytes_down"]
    assert both["bytes_up"] == record["arms"]["server_finetune"]["bytes_up"] + one_shot["bytes_up"]
    assert "no DP guarantee" in summary["downstream_one_shot_finetune_privacy"]


def test_the_generators_dp_carries_over_only_where_no_real_data_is_read(run):
    summary = json.loads((run / "summary.json").read_text())
    eps = summary["epsilon"]
    assert math.isfinite(eps) and eps > 0
    assert f"({eps:.3g}, 0.001)-DP by post-processing" in summary["downstream_privacy"]
    assert "post-processing" in summary["downstream_topup_privacy"]
    assert "not covered" in summary["downstream_topup_privacy"]
    assert "no guarantee" in summary["downstream_real_privacy"]
    record = json.loads((run / "downstream.json").read_text())
    assert record["generator_epsilon"] == eps
    page = (run / "report.html").read_text()
    assert "<h2>Downstream classifier</h2>" in page and "by post-processing" in page
    assert any(k.endswith("_auc") for k in record["generator_membership"])


def test_a_finished_generator_run_is_reused(run, tmp_path):
    cfg = load_config(
        None, [*TINY, DOWNSTREAM, f"downstream.generator_run={run}", "downstream.modes=[real]"]
    )
    # The downstream folder is held while its arms train (another resume is refused).
    held_during_arms: list[bool] = []
    summary = run_downstream(
        cfg,
        tmp_path / "reuse",
        progress=False,
        on_arm=lambda *_: held_during_arms.append(is_held(tmp_path / "reuse")),
    )
    assert held_during_arms == [True] and not is_held(tmp_path / "reuse")
    assert summary["generator_run"] == str(run)
    record = json.loads((tmp_path / "reuse" / "downstream.json").read_text())
    assert list(record["arms"]) == ["real"]
    first = json.loads((run / "downstream.json").read_text())["arms"]["real"]
    assert record["arms"]["real"]["accuracy"] == first["accuracy"]  # same seed, same arm


def test_a_downstream_run_into_another_runs_folder_is_refused_and_changes_nothing(run, tmp_path):
    # Prepare: a copy of a finished run (generator and arms in one folder) as --out of a
    # downstream run that reuses the original generator.
    full = tmp_path / "full"
    shutil.copytree(run, full)
    before = {p.name: p.read_bytes() for p in full.iterdir() if p.is_file()}
    items = [*TINY, DOWNSTREAM, f"downstream.generator_run={run}", "downstream.modes=[real]"]
    # Execute / Assert
    with pytest.raises(
        DownstreamError, match=r"holds config.yaml, summary.json.*choose another --out"
    ):
        run_downstream(load_config(None, items), full, progress=False)
    assert {p.name: p.read_bytes() for p in full.iterdir() if p.is_file()} == before


def test_an_unfinished_generator_run_is_refused(run, tmp_path):
    # A run killed before its end leaves config.yaml and checkpoints but no summary.
    killed = tmp_path / "killed"
    shutil.copytree(run, killed)
    (killed / "summary.json").unlink()
    cfg = load_config(None, [*TINY, DOWNSTREAM, f"downstream.generator_run={killed}"])
    with pytest.raises(DownstreamError, match=r"unfinished .*fedgen run --resume"):
        run_downstream(cfg, tmp_path / "out", progress=False)


def test_a_generator_run_of_another_data_set_is_refused(run, tmp_path):
    items = [*TINY, DOWNSTREAM, f"downstream.generator_run={run}", "data.sources=[fashion-mnist]"]
    with pytest.raises(DownstreamError, match=r"generates \['mnist'\].*fashion-mnist"):
        run_downstream(load_config(None, items), tmp_path / "out", progress=False)


def test_classes_other_than_the_generators_are_refused(run, tmp_path):
    items = [*TINY, DOWNSTREAM, f"downstream.generator_run={run}", "downstream.classes=[a, b]"]
    with pytest.raises(DownstreamError, match=r"do not match the generator's classes"):
        run_downstream(load_config(None, items), tmp_path / "out", progress=False)


def test_a_top_up_ratio_outside_the_unit_interval_fails_the_command(tmp_path):
    # In this process: the recipe is refused before anything is loaded.
    args = [
        "run",
        "--out",
        str(tmp_path / "x"),
        *sets([*TINY, DOWNSTREAM, "downstream.topup_ratio=2"]),
    ]
    result = CliRunner().invoke(app, args)
    assert result.exit_code != 0
    assert "downstream.topup_ratio" in result.stdout + result.stderr
    assert result.exception is None or isinstance(result.exception, SystemExit)


def test_the_classifier_federation_takes_client_dp_and_composes_the_guarantees(run, tmp_path):
    # Prepare: the classifier's own DP-FedAvg (Poisson half of the clients, clip, noise).
    items = [
        *TINY,
        DOWNSTREAM,
        f"downstream.generator_run={run}",
        "downstream.modes=[real, topup]",
        "downstream.strategy={name: fedavg, params: {fraction: 0.5, min_clients: 1, "
        "weighted: false, sampling: poisson, fixed_denominator: true}}",
        "downstream.transforms=[{name: clip, params: {max_norm: 1.0}}, "
        "{name: client_dp, params: {noise_multiplier: 1.0, delta: 1e-3}}]",
    ]

    # Execute
    run_downstream(load_config(None, items), tmp_path / "dp", progress=False)

    # Assert: epsilon as Opacus's accountant gives it for 2 rounds at q = 0.5, sigma = 1.
    oracle = RDPAccountant()
    for _ in range(2):
        oracle.step(noise_multiplier=1.0, sample_rate=0.5)
    own_eps = oracle.get_epsilon(delta=1e-3)
    arms = json.loads((tmp_path / "dp" / "downstream.json").read_text())["arms"]
    assert arms["real"]["own_privacy"]["epsilon"] == pytest.approx(own_eps)
    gen_eps = json.loads((run / "summary.json").read_text())["epsilon"]
    assert f"({gen_eps + own_eps:.3g}, 0.002)" in arms["topup"]["privacy"]
    # Client-level DP withholds the rounds' bytes (they reveal the cohort): none, not 0.
    assert arms["real"]["bytes_total"] is None and arms["real"]["bytes_up"] is None
    # and their time, which follows the cohorts' sizes as well.
    assert arms["real"]["seconds"] is None and arms["topup"]["seconds"] is None


def test_a_codec_shrinks_the_classifiers_uploads(run, tmp_path):
    items = [
        *TINY,
        DOWNSTREAM,
        f"downstream.generator_run={run}",
        "downstream.modes=[real]",
        "downstream.transforms=[{name: quantize, params: {bits: 8}}]",
    ]
    run_downstream(load_config(None, items), tmp_path / "q8", progress=False)
    q8 = json.loads((tmp_path / "q8" / "downstream.json").read_text())["arms"]["real"]
    plain = json.loads((run / "downstream.json").read_text())["arms"]["real"]
    # 8-bit codes for float32 coordinates: about a quarter of the bytes up.
    assert q8["bytes_up"] < 0.3 * plain["bytes_up"]
    # The broadcast stays float32 (only the job's config names the codec).
    assert q8["bytes_down"] == pytest.approx(plain["bytes_down"], rel=1e-3)


def test_a_resumed_run_keeps_its_finished_arms_and_trains_the_rest(run, tmp_path):
    # Prepare: the run as a cut-off one left it: the "real" arm unfinished, summary.json
    # without the arms' figures; the kept arms marked, to tell kept from retrained.
    cut = tmp_path / "cut"
    shutil.copytree(run, cut)
    record = json.loads((cut / "downstream.json").read_text())
    real = record["arms"].pop("real")
    for figures in record["arms"].values():
        figures["kept"] = True
    (cut / "downstream.json").write_text(json.dumps(record))
    summary = json.loads((cut / "summary.json").read_text())
    cut_summary = {k: v for k, v in summary.items() if not k.startswith("downstream")}
    (cut / "summary.json").write_text(json.dumps(cut_summary))
    # Execute
    result = CliRunner().invoke(app, ["run", "--no-progress", "--resume", str(cut)])
    # Assert: every arm's figures are back; the finished ones were kept, "real" trained
    # again to the same figures (one seed).
    assert result.exit_code == 0, result.output[-2000:]
    after = json.loads((cut / "downstream.json").read_text())
    assert set(after["arms"]) == set(record["arms"]) | {"real"}
    assert all(after["arms"][arm].get("kept") for arm in record["arms"])
    assert after["arms"]["real"]["accuracy"] == real["accuracy"]
    resumed = json.loads((cut / "summary.json").read_text())
    assert {k for k in resumed if k.startswith("downstream")} == {
        k for k in summary if k.startswith("downstream")
    }


def test_a_generator_that_failed_ends_the_run_as_failed_before_any_arm(mnist_dir, tmp_path):
    # Every client sends NaN (no DP: under client-level DP a round releases noise instead).
    plain = [item for item in TINY if not item.startswith(("strategy.params", "transforms"))]
    out = tmp_path / "run"
    result = CliRunner().invoke(
        app,
        [
            "run",
            "--no-progress",
            "--out",
            str(out),
            *sets([*plain, DOWNSTREAM, "faults={nan: 1.0}"]),
        ],
    )
    assert result.exit_code == 1, result.output[-2000:]
    assert "failed after 2 round(s)" in " ".join(result.output.split())
    assert "generator_run" not in result.output  # the user set none
    assert not (out / "downstream.json").exists()
