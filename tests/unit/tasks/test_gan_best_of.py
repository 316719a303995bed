"""The cGAN's best-of-m sampling: each image the best of m draws by the discriminator."""

import json

import pytest
import torch
from tiny_federation import tiny_config

from fedgen.engine.image_union import load_run_model
from fedgen.errors import ConfigError
from fedgen.experiment import build_experiment, run_experiment
from fedgen.registry import TASKS
from fedgen.seeding import torch_generator
from fedgen.tasks.best_of import BestOfSampling


def make():
    cls = TASKS.get("cgan")
    return cls(cls.Params(batch_size=32), 10, (1, 28, 28), seed=0)


def test_best_of_one_is_plain_sampling_draw_for_draw():
    task = make()
    labels = torch.arange(10).repeat(3)
    a = task.sample(labels, torch_generator(5, "s"))
    b = task.sample_best_of(labels, torch_generator(5, "s"), 1)
    assert torch.equal(a, b)


def test_each_image_is_the_discriminators_favourite_of_its_draws():
    # Oracle: the m candidates drawn by hand from the same stream, scored by D.
    task = make()
    G, D = task.modules["generator"], task.modules["discriminator"]
    labels = torch.tensor([0, 3, 3, 9, 7])
    m = 4
    got = task.sample_best_of(labels, torch_generator(5, "s"), m)
    gen = torch_generator(5, "s")
    candidates = labels.repeat_interleave(m)
    with torch.no_grad():
        images = G(torch.randn(len(candidates), task.params.latent_dim, generator=gen), candidates)
        scores = D(images, candidates).view(len(labels), m)
    for i in range(len(labels)):
        drawn = images[i * m : (i + 1) * m]
        assert torch.allclose(got[i], (drawn[scores[i].argmax()] + 1) / 2, atol=1e-6)
        # ...and not merely one of them: the others score lower.
        assert scores[i].max() > scores[i].min()
    assert got.shape == (len(labels), 1, 28, 28)


def test_best_of_zero_is_refused():
    with pytest.raises(ValueError, match="best_of must be >= 1"):
        make().sample_best_of(torch.tensor([1]), torch_generator(0), 0)


def test_a_runs_evaluated_model_samples_by_its_eval_best_of(mnist_dir):
    cfg = tiny_config(mnist_dir, **{"eval.best_of": 3})
    fed = build_experiment(cfg).federation
    model = load_run_model(fed, cfg.eval.model, torch_generator(0), cfg.eval.best_of)
    assert isinstance(model, BestOfSampling) and model.best_of == 3
    labels = torch.arange(10)
    expected = fed.task.sample_best_of(labels, torch_generator(1), 3)
    assert torch.equal(model.sample(labels, torch_generator(1)), expected)
    assert load_run_model(fed, cfg.eval.model, torch_generator(0)) is fed.task


def test_best_of_is_refused_where_the_discriminator_is_not_the_released_one(mnist_dir):
    # A discriminator layer kept by each client (FedPer-style), and spectral norm, whose
    # averaged power-iteration vectors make the scores' order untrustworthy.
    for params, says in [
        ("{personal: [discriminator.head]}", "are not federated"),
        ("{spectral_norm: true}", "spectral_norm"),
    ]:
        cfg = tiny_config(mnist_dir, **{"task.params": params, "eval.best_of": 2})
        with pytest.raises(ConfigError, match=says):
            build_experiment(cfg)
        fed = build_experiment(tiny_config(mnist_dir, **{"task.params": params})).federation
        with pytest.raises(ConfigError, match=says):
            BestOfSampling(fed.task, 2)


def test_a_runs_own_evaluation_draws_the_best_of_and_says_so(mnist_dir, tmp_path):
    cfg = tiny_config(
        mnist_dir,
        **{"federation.rounds": 1, "eval.best_of": 3, "eval.tstr_samples": 200, "ledger": "false"},
    )
    run_experiment(cfg, tmp_path / "run", progress=False)
    last = json.loads((tmp_path / "run" / "metrics.jsonl").read_text().splitlines()[-1])
    assert last["best_of"] == 3 and "tstr_accuracy" in last
