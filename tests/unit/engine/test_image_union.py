"""The union of the clients' own image models (fedgen.engine.image_union): each class drawn
from the clients that hold it, in proportion to their examples of it, from their own
models; a run reports the union's figures, and one without own models is refused."""

from __future__ import annotations

import pytest
import torch
from tiny_federation import tiny_config

from fedgen.engine.client_models import load_client_model
from fedgen.engine.image_union import UnionSampler, class_weights, own_states, personal_union
from fedgen.errors import ConfigError
from fedgen.experiment import build_experiment, run_experiment
from fedgen.params import ParamsError

#: FedPer's personal layers: the generator's output convolution stays on each client.
FEDPER = (
    "{batch_size: 16, generator_width: 8, discriminator_width: 8, "
    "personal: [generator.body.5, discriminator.head]}"
)


def test_class_weights_share_each_class_by_its_holders_examples():
    counts = torch.tensor([[30, 0, 0], [10, 5, 0]])
    weights = class_weights(counts)
    assert weights[:, 0].tolist() == pytest.approx([0.75, 0.25])
    assert weights[:, 1].tolist() == pytest.approx([0.0, 1.0])
    # A class no client holds is drawn by the clients' total examples (30 and 15).
    assert weights[:, 2].tolist() == pytest.approx([2 / 3, 1 / 3])
    with pytest.raises(ValueError, match="at least one client"):
        class_weights(torch.zeros(2, 3))


def test_each_class_comes_from_the_own_models_of_the_clients_holding_it(mnist_dir):
    # Prepare: a two-round FedPer run on a 0.1-Dirichlet split, so clients hold few classes.
    cfg = tiny_config(
        mnist_dir,
        **{
            "task.params": FEDPER,
            "data.partition.kind": "dirichlet",
            "data.partition.params": "{alpha: 0.1}",
            "federation.rounds": 2,
            "strategy.params": "{min_clients: 4, fraction: 1.0}",
        },
    )
    fed = build_experiment(cfg).federation
    fed.run()
    states = own_states(fed, "personal", 0, seed=0)
    assert sorted(states) == [0, 1, 2, 3]  # every client trained and holds its own layer
    # Mark each client's own model: its private output bias saturates the tanh, so every
    # pixel of its images reads 1 (even client ids) or 0 (odd ones).
    for cid, state in states.items():
        state["generator.body.5.bias"] = torch.full_like(
            state["generator.body.5.bias"], 100.0 if cid % 2 == 0 else -100.0
        )
    task = fed.task
    counts = torch.stack(
        [torch.bincount(fed.clients[c].data.labels, minlength=10) for c in sorted(states)]
    )
    sampler = UnionSampler(task, states, counts, torch.Generator().manual_seed(0))
    labels = torch.arange(10).repeat_interleave(400)
    # Execute
    images = sampler(labels)
    # Assert: every image is one client's (all ones or all zeros), and each class's share of
    # even clients' images is the even clients' share of that class's examples.
    flat = images.flatten(1)
    assert ((flat == 1).all(1) | (flat == 0).all(1)).all()
    even = (flat[:, 0] == 1).double()
    for c in range(10):
        expected = float(counts[::2, c].sum() / counts[:, c].sum())
        assert float(even[labels == c].mean()) == pytest.approx(expected, abs=0.08), c
        if expected in (0.0, 1.0):  # held by one parity only: never drawn from the other
            assert float(even[labels == c].mean()) == expected
    # A label is only ever given to a client holding its class.
    owners = sampler.owners(labels)
    held = counts[owners, labels] > 0
    assert held.all()
    # The images come from each client's own model: client 0's own model alone gives ones.
    load_client_model(fed, 0)
    task.load_state(states[0])
    assert (task.sample(labels[:5], torch.Generator().manual_seed(1)) == 1).all()


def test_a_run_reports_and_describes_the_union_of_own_models(mnist_dir, tmp_path):
    # Prepare: one FedPer round, a small evaluation, the union and fine-tuning on.
    cfg = tiny_config(
        mnist_dir,
        **{
            "federation.rounds": 1,
            "task.params": FEDPER,
            "data.partition.kind": "dirichlet",
            "data.partition.params": "{alpha: 0.1}",
            "eval.every": 0,
            "eval.num_quality_samples": 50,
            "eval.tstr_samples": 50,
            "eval.tstr_epochs": 1,
            "eval.union": "true",
            "eval.personalize_steps": 1,
            "strategy.params": "{min_clients: 2, fraction: 0.5}",
        },
    )
    # Execute
    summary = run_experiment(cfg, tmp_path / "run", progress=False)
    # Assert: both unions' figures beside the run's own, each described.
    for model in ("personal", "finetuned"):
        assert 0 <= summary[f"tstr_accuracy_union_{model}"] <= 1
        assert summary[f"frechet_distance_union_{model}"] >= 0
        assert f"union_{model}" in summary["descriptions"]
    # One round of 2 of 4 clients: only those that trained hold a layer of their own.
    assert summary["clients_union_personal"] == 2
    assert summary["clients_union_finetuned"] == 4
    assert "tstr_accuracy" in summary and "client_tstr_accuracy_global" not in summary


@pytest.mark.parametrize(
    ("overrides", "match"),
    [
        ({"eval.union": "true"}, "eval.union measures the union.*set eval.personalize_steps"),
        (
            {
                "eval.union": "true",
                "eval.personalize_steps": 2,
                "transforms": "[{name: clip, params: {max_norm: 1.0}}, "
                "{name: client_dp, params: {noise_multiplier: 1.0}}]",
            },
            "eval.union reads each client's label proportions",
        ),
        ({"eval.model": "union"}, "eval.model: union draws each class from the clients' own"),
        (
            {
                "eval.model": "union",
                "task.params": FEDPER,
                "transforms": "[{name: clip, params: {max_norm: 1.0}}, "
                "{name: client_dp, params: {noise_multiplier: 1.0}}]",
            },
            "eval.model: union samples every client's unnoised own model",
        ),
        (
            {"eval.model": "union", "task.params": FEDPER, "backend.name": "flower"},
            "on Flower those stay on the SuperNodes",
        ),
    ],
)
def test_a_union_without_own_models_or_under_dp_is_refused(mnist_dir, overrides, match):
    with pytest.raises((ConfigError, ParamsError), match=match):
        build_experiment(tiny_config(mnist_dir, **overrides))


def test_a_run_without_own_models_has_no_union_to_sample(mnist_dir):
    fed = build_experiment(tiny_config(mnist_dir)).federation
    with pytest.raises(ConfigError, match="use --model global"):
        personal_union(fed, torch.Generator())
