"""Simulated attackers: chosen by the seed, poisoning shards or updates, recorded."""

from __future__ import annotations

import json

import pytest
import torch
from tiny_federation import tiny_config

from fedgen.assembly.attack import choose_attackers
from fedgen.data.client_data import ClientData
from fedgen.data.dataset import ImageDataset
from fedgen.data.poison import Backdoor, LabelFlip, ModeCollapse, trigger_rate
from fedgen.errors import ConfigError
from fedgen.experiment import build_experiment, run_experiment
from fedgen.transforms.adversary import FreeRider, GaussianUpdate, Scaling, SignFlip
from fedgen.transforms.base import TransformContext


def shard() -> ClientData:
    images = torch.arange(3 * 784, dtype=torch.int64).remainder(200).to(torch.uint8)
    data = ImageDataset(
        "t", images.reshape(3, 1, 28, 28), torch.tensor([0, 1, 9]), tuple("0123456789")
    )
    return ClientData(5, data)


def test_data_poisoners_by_hand():
    data = shard()
    assert LabelFlip().poison(data).data.labels.tolist() == [9, 8, 0]
    collapsed = ModeCollapse().poison(data).data
    assert all(torch.equal(collapsed.images[i], data.data.images[0]) for i in range(3))
    assert torch.equal(collapsed.labels, data.data.labels)
    stamped = Backdoor(pixels=3).poison(data).data.images
    assert stamped[:, 0, 26, 23:26].eq(255).all() and int((stamped != data.data.images).sum()) <= 9
    assert trigger_rate(stamped.float() / 255, 3) == 1.0
    assert trigger_rate(torch.zeros(4, 1, 28, 28), 3) == 0.0


def test_update_poisoners_touch_only_the_attackers():
    update = {"w": torch.tensor([1.0, -2.0]), "n": torch.tensor([3])}
    ctx = TransformContext(round=0, client_id=1, seed=7, num_clients=4)
    honest = TransformContext(round=0, client_id=2, seed=7, num_clients=4)
    for attack, expected in [
        (SignFlip(scale=2.0), [-2.0, 4.0]),
        (Scaling(boost=10.0), [10.0, -20.0]),
        (FreeRider(), [0.0, 0.0]),
    ]:
        attack.bind(frozenset({1}))
        assert attack.on_client(update, ctx)[0]["w"].tolist() == expected
        assert attack.on_client(update, honest)[0] is update
    noise = GaussianUpdate(std=0.5)
    noise.bind(frozenset({1}))
    a, b = noise.on_client(update, ctx)[0], noise.on_client(update, ctx)[0]
    assert torch.equal(a["w"], b["w"]) and not torch.equal(a["w"], update["w"])


def test_attackers_follow_the_seed():
    a = choose_attackers(range(20), 0.2, seed=3)
    assert len(a) == 4 and a == choose_attackers(range(20), 0.2, seed=3)
    assert a != choose_attackers(range(20), 0.2, seed=4)


def test_an_armed_tiny_federation_poisons_only_its_attackers(mnist_dir):
    # Prepare: 4 clients, a quarter flip labels.
    clean = build_experiment(tiny_config(mnist_dir)).federation
    cfg = tiny_config(mnist_dir, attack="{kind: label_flip, fraction: 0.25}")
    # Execute
    fed = build_experiment(cfg).federation
    # Assert
    [attacker] = choose_attackers(range(4), 0.25, cfg.seed)
    for cid, client in fed.clients.items():
        labels = clean.clients[cid].data.labels
        assert torch.equal(client.data.labels, 9 - labels if cid == attacker else labels)
    signed = build_experiment(tiny_config(mnist_dir, attack="{kind: sign_flip}")).federation
    assert isinstance(signed.transforms[0], SignFlip) and signed.transforms[0].attackers


def test_an_attack_is_recorded_in_the_run_folder(mnist_dir, tmp_path):
    cfg = tiny_config(
        mnist_dir,
        attack="{kind: scaling, fraction: 0.5, params: {boost: 4.0}}",
        **{"federation.rounds": 1, "eval.every": 0, "eval.final": "false"},
    )
    run_experiment(cfg, tmp_path / "run")
    record = json.loads((tmp_path / "run" / "attackers.json").read_text())
    assert record["kind"] == "scaling" and record["params"] == {"boost": 4.0}
    assert record["clients"] == sorted(choose_attackers(range(4), 0.5, cfg.seed))
    report = (tmp_path / "run" / "report.html").read_text()
    assert "Simulated attack" in report and "attacker" in report


@pytest.mark.parametrize(
    ("attack", "message"),
    [
        ("{kind: nope}", "unknown adversary 'nope'"),
        ("{kind: scaling, params: {factor: 2}}", "unknown key 'attack.params.factor'"),
    ],
)
def test_a_bad_attack_is_refused_with_its_fix(mnist_dir, attack, message):
    with pytest.raises(ConfigError, match=message):
        build_experiment(tiny_config(mnist_dir, attack=attack))
