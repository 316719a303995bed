"""run_attack on a real (tiny) federated run folder: files written, figures returned, bad input."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
from PIL import Image

from fedgen.attacks.run import run_attack
from fedgen.errors import CheckpointError, ConfigError


@pytest.fixture
def run_copy(tiny_run: Path, tmp_path: Path) -> Path:
    """A private copy of the shared run folder, so a test may write into it."""
    return Path(shutil.copytree(tiny_run, tmp_path / "run"))


def test_membership_writes_json_and_roc_into_the_run_folder(run_copy):
    # Execute
    figures = run_attack(run_copy, "membership", n=100, samples_per_class=50)
    # Assert
    record = json.loads((run_copy / "attack_membership.json").read_text())
    assert record["figures"] == figures
    assert record["kind"] == "membership" and record["round"] == 1
    assert figures["members"] == figures["nonmembers"] == 100
    for name in ("logan", "ganleaks"):
        assert 0.0 <= figures[f"{name}_auc"] <= 1.0
        assert 0.0 <= figures[f"{name}_tpr_at_1pct_fpr"] <= 1.0
    svg = (run_copy / "attack_membership_roc.svg").read_text()
    assert svg.startswith("<svg") and "logan" in svg and "false positive rate" in svg
    # Same seed, same figures; another seed draws other candidates.
    assert run_attack(run_copy, "membership", n=100, samples_per_class=50) == figures
    assert run_attack(run_copy, "membership", n=100, samples_per_class=50, seed=1) != figures


def test_the_untrained_reference_attacks_the_initial_weights_and_needs_no_checkpoint(run_copy):
    # Prepare: the trained figures first, then a folder whose checkpoints are gone.
    trained = run_attack(run_copy, "membership", n=100, samples_per_class=50)
    shutil.rmtree(run_copy / "checkpoints")
    # Execute
    reference = run_attack(run_copy, "membership", n=100, samples_per_class=50, untrained=True)
    # Assert: the same candidates scored by other weights, recorded as the initial ones.
    record = json.loads((run_copy / "attack_membership.json").read_text())
    assert record["round"] == -1 and record["descriptions"]["weights"].startswith("initial")
    assert reference["members"] == trained["members"] == 100
    assert reference["logan_auc"] != trained["logan_auc"]
    assert run_attack(run_copy, "membership", n=100, samples_per_class=50, untrained=True) == (
        reference
    )


def test_inversion_writes_json_and_a_picture_of_originals_and_reconstructions(tiny_run, tmp_path):
    # Execute: results go to --out, the shared run folder stays untouched.
    figures = run_attack(tiny_run, "inversion", out=tmp_path, batch_size=2, iterations=15)
    # Assert
    record = json.loads((tmp_path / "attack_inversion.json").read_text())
    assert record["figures"] == figures
    assert record["rows"] == ["originals", "none", "dp", "secure_sum", "secure_sum_all"]
    for view in record["rows"][1:]:
        assert f"psnr_{view}" in figures and f"ssim_{view}" in figures
        assert figures[f"psnr_best_{view}"] >= figures[f"psnr_{view}"]
    assert -1.0 <= figures["secure_sum_target_cosine"] < 1.0  # 4 real clients summed
    with Image.open(tmp_path / "attack_inversion.png") as png:
        # 2 tiles per row, 5 rows, 2-pixel padding, 3x upscaling.
        assert png.size == ((2 * 30 + 2) * 3, (5 * 30 + 2) * 3)
    assert not (tiny_run / "attack_inversion.json").exists()


def test_a_run_folder_without_checkpoints_is_refused(run_copy):
    shutil.rmtree(run_copy / "checkpoints")
    with pytest.raises(CheckpointError, match="no checkpoint"):
        run_attack(run_copy, "membership")


def test_a_folder_that_is_no_run_is_refused(tmp_path):
    with pytest.raises(ConfigError, match="not a run folder"):
        run_attack(tmp_path, "inversion")


def test_an_unknown_kind_is_refused(tiny_run):
    with pytest.raises(ConfigError, match="membership, inversion"):
        run_attack(tiny_run, "reconstruction")  # type: ignore[arg-type]


def test_a_batch_larger_than_the_clients_data_is_refused(tiny_run, tmp_path):
    # 10,000 digits over 4 IID clients: 2,500 each.
    with pytest.raises(ConfigError, match="batch_size 5000 is larger than client 1's 2500"):
        run_attack(tiny_run, "inversion", out=tmp_path, client=1, batch_size=5000)


@pytest.mark.parametrize(
    ("kind", "options", "message"),
    [
        ("membership", {"batch_size": 2}, "batch_size: Extra inputs"),
        ("inversion", {"secure_sum_clients": 5}, "secure_sum_clients=5 but only 4"),
        ("inversion", {"client": 9}, "client 9 does not exist; the run has clients 0..3"),
        ("membership", {"n": 20_000}, "pass n <= 10000"),
    ],
)
def test_bad_options_are_refused(tiny_run, tmp_path, kind, options, message):
    with pytest.raises(ConfigError, match=message):
        run_attack(tiny_run, kind, out=tmp_path, **options)


def test_a_discriminator_kept_on_the_clients_is_out_of_the_servers_reach(
    make_tiny_config, tmp_path
):
    # Prepare: a run that federates only the generator.
    from fedgen.experiment import run_experiment

    cfg = make_tiny_config(
        **{
            "federation.rounds": 1,
            "task.params": "{batch_size: 16, generator_width: 8, discriminator_width: 8, "
            "federate: [generator]}",
        },
    )
    run_experiment(cfg, tmp_path / "run", progress=False)
    # Execute
    figures = run_attack(tmp_path / "run", "membership", n=50, samples_per_class=10)
    # Assert: only the black-box attack ran, and the JSON says why.
    assert "logan_auc" not in figures and "ganleaks_auc" in figures
    notes = json.loads((tmp_path / "run" / "attack_membership.json").read_text())["notes"]
    assert any("no white-box attack" in note for note in notes)
    with pytest.raises(ConfigError, match="never sees its update"):
        run_attack(tmp_path / "run", "inversion", iterations=1)


def test_a_centralized_run_has_no_secure_sum_to_attack(make_tiny_config, tmp_path):
    # Prepare: the federation's centralized ceiling, one client holding the pooled data.
    from fedgen.experiment import run_experiment

    run_experiment(
        make_tiny_config(**{"federation.rounds": 1, "federation.centralized": "true"}),
        tmp_path / "run",
        progress=False,
    )
    # Execute: the default secure_sum_clients (4) would need four clients.
    figures = run_attack(tmp_path / "run", "inversion", batch_size=2, iterations=3)
    # Assert: the update as sent and its DP view are attacked; no sum is pretended.
    record = json.loads((tmp_path / "run" / "attack_inversion.json").read_text())
    assert record["rows"] == ["originals", "none", "dp"]
    assert "psnr_none" in figures and "psnr_dp" in figures
    assert not any(key.endswith(("secure_sum", "secure_sum_all")) for key in figures)
    assert "secure_sum_target_cosine" not in figures


def test_logan_scores_the_discriminator_clients_hold_not_the_servers_average(
    mnist_dir, tmp_path, monkeypatch
):
    # Prepare: a run with a moving average, and a spy on what the attack scores with.
    import torch
    from tiny_federation import tiny_config

    from fedgen.attacks import run as attack_run
    from fedgen.experiment import load_run, run_experiment

    overrides = {
        "strategy.params": "{min_clients: 2, ema_decay: 0.5}",
        # The attack reads the checkpoint only: no evaluation (it took minutes).
        "eval.every": 0,
        "eval.final": "false",
    }
    run_experiment(tiny_config(mnist_dir, **overrides), tmp_path / "run", progress=False)
    seen: dict[str, dict[str, torch.Tensor]] = {}
    real_attack = attack_run.membership_attack

    def spy(task, *args, **kwargs):
        seen["d"] = {k: v.clone() for k, v in task.federated_state().items()}
        return real_attack(task, *args, **kwargs)

    monkeypatch.setattr(attack_run, "membership_attack", spy)
    # Execute
    run_attack(tmp_path / "run", "membership", n=50, samples_per_class=20)
    # Assert: the discriminator as trained (what every client receives), the generator
    # the server's average (what it releases); the two averages differ from the iterates.
    fed = load_run(tmp_path / "run").federation
    average = fed.strategy.evaluation_state(fed.global_state)
    for k, v in seen["d"].items():
        expected = fed.global_state[k] if k.startswith("discriminator.") else average[k]
        assert torch.equal(v, expected), k
    assert any(not torch.equal(average[k], fed.global_state[k]) for k in seen["d"])


def test_the_feature_space_is_trained_on_neither_members_nor_nonmembers(run_copy, monkeypatch):
    # Prepare: spies on what the embedding trains on and what the attack scores; an
    # untrained stand-in for the embedding keeps the test cheap.
    import torch

    from fedgen.attacks import run as attack_run
    from fedgen.eval.classifier import FeatureClassifier, SmallCNN

    trained_on = []

    def fake_load_or_train(train, test, **kwargs):
        trained_on.append(train)
        model = SmallCNN(train.num_classes)
        return FeatureClassifier(
            model, dataset_name=train.name, num_train=len(train), epochs=1, test_accuracy=0.0
        )

    monkeypatch.setattr(FeatureClassifier, "load_or_train", fake_load_or_train)
    scored = {}
    real_attack = attack_run.membership_attack

    def spy(task, members, nonmembers, *args, **kwargs):
        scored.update(members=members, nonmembers=nonmembers)
        return real_attack(task, members, nonmembers, *args, **kwargs)

    monkeypatch.setattr(attack_run, "membership_attack", spy)

    def rows(images: torch.Tensor) -> set[bytes]:
        as_bytes = images if images.dtype == torch.uint8 else images.mul(255).round().byte()
        return {row.numpy().tobytes() for row in as_bytes}

    # Execute
    run_attack(run_copy, "membership", n=100, samples_per_class=5, space="features")
    # Assert: one embedding, trained on images that are neither members nor non-members.
    (embedder_data,) = trained_on
    candidates = rows(scored["members"].images) | rows(scored["nonmembers"].images)
    assert len(embedder_data) > 0 and not rows(embedder_data.images) & candidates
    record = json.loads((run_copy / "attack_membership.json").read_text())
    assert any("neither members nor non-members" in note for note in record["notes"])
    assert record["nonmembers_class_matched"] is True
