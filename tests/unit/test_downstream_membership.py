"""The downstream pipeline's membership attacks: the generator's discriminator as
participants hold it, and the classifiers' AUC beside its untrained reference."""

from __future__ import annotations

import os

os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

from pathlib import Path

import pytest
import torch
from tiny_federation import tiny_config

from fedgen.data.client_data import ClientData
from fedgen.data.dataset import ImageDataset
from fedgen.data.federated import FederatedData
from fedgen.downstream import membership as downstream_membership
from fedgen.downstream.generator_run import GeneratorRun
from fedgen.downstream.membership import classifier_attack, initial_classifier
from fedgen.downstream.run import flat_figures


@pytest.fixture(scope="module")
def ema_run(mnist_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A tiny finished cGAN run whose server keeps a moving average (ema_decay)."""
    from fedgen.experiment import run_experiment

    torch.set_num_threads(1)
    out = tmp_path_factory.mktemp("ema") / "run"
    overrides = {
        "federation.rounds": 2,
        "strategy.params": "{min_clients: 2, ema_decay: 0.5}",
        "eval.every": 0,
        "eval.final": "false",
    }
    run_experiment(tiny_config(mnist_dir, **overrides), out, progress=False)
    return out


@pytest.mark.parametrize("client", [None, 0])
def test_the_generators_logan_scores_the_discriminator_clients_hold(ema_run, client, monkeypatch):
    # Prepare: the run as the downstream pipeline opens it, and a spy on what is scored.
    from fedgen.attacks.membership import MembershipResult
    from fedgen.experiment import load_run

    generator = GeneratorRun(ema_run, load_run(ema_run), {"status": "completed"}, client)
    seen: dict[str, torch.Tensor] = {}

    def spy(task, *args, **kwargs):
        seen.update({k: v.clone() for k, v in task.federated_state().items()})
        return MembershipResult(figures={})

    monkeypatch.setattr(downstream_membership, "membership_attack", spy)
    # Execute
    result = downstream_membership.generator_membership(generator, 20)
    # Assert: the discriminator as trained (what every client receives), the generator
    # as released (the server's average); the two differ, so the check has teeth.
    fed = generator.experiment.federation
    average = fed.strategy.evaluation_state(fed.global_state)
    for k, v in seen.items():
        expected = fed.global_state[k] if k.startswith("discriminator.") else average[k]
        assert torch.equal(v, expected), k
    assert any(
        not torch.equal(average[k], fed.global_state[k]) for k in seen if "discriminator" in k
    )
    assert any("not the server's moving average" in note for note in result.notes)


def toy(n: int, seed: int) -> ImageDataset:
    gen = torch.Generator().manual_seed(seed)
    images = torch.randint(0, 256, (n, 1, 28, 28), dtype=torch.uint8, generator=gen)
    labels = torch.arange(n) % 10
    return ImageDataset("toy", images, labels, tuple(str(d) for d in range(10)))


def test_each_arm_carries_the_untrained_reference_and_the_note_on_chance():
    # Prepare: two clients of random images, a random test split.
    train = toy(60, 0)
    halves = [train.subset(torch.arange(30)), train.subset(torch.arange(30, 60))]
    clients = [ClientData(i, shard) for i, shard in enumerate(halves)]
    data = FederatedData(clients=clients, train=train, test=toy(40, 1))
    attack = classifier_attack(data, 20, seed=3)
    # Execute: the untrained classifier itself is attacked as an arm.
    figures = attack.figures(initial_classifier(10, seed=3))
    record = {**attack.record(), "arms": {"real": _arm(figures)}}
    flat = flat_figures(record)
    # Assert: the reference is the same attack on the arms' initial weights (an oracle:
    # the untrained arm scores exactly it), beside the arm in both files, with the note.
    assert figures["loss_auc"] == figures["untrained_loss_auc"] == attack.reference["loss_auc"]
    assert flat["downstream_real_membership_auc_untrained"] == attack.reference["loss_auc"]
    assert "no exact chance baseline" in flat["downstream_membership_note"]
    assert "no exact chance baseline" in record["membership_note"]
    assert record["membership_candidates"][0].startswith("held-out real images")


def _arm(membership: dict[str, float]) -> dict:
    return {
        "accuracy": 0.1,
        "worst_class_accuracy": 0.0,
        "rounds": 0,
        "bytes_total": 0,
        "seconds": 0.0,
        "membership": membership,
        "privacy": "no guarantee",
    }
