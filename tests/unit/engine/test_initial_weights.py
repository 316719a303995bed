"""federation.init_from: a run starts from another run's global model, or is refused
with the fix (another architecture, a missing run, under DP a model of the same data)."""

from __future__ import annotations

import shutil

import pytest
import torch
from tiny_federation import tiny_config

from fedgen.engine.checkpoint import list_checkpoints, load_checkpoint
from fedgen.errors import CheckpointError, ConfigError
from fedgen.experiment import RecipeClientSide, build_experiment, load_run, run_experiment

# The public source run: scikit-learn's digits (shipped with scikit-learn), 2 rounds.
PUBLIC = {
    "data.sources": "[digits]",
    "data.num_clients": 2,
    "federation.rounds": 2,
    "eval.every": 0,
    "eval.final": False,
}
# DP-SGD as the recipe asks for it (batches large enough never to come out empty).
DP_RECIPE = {
    "dpsgd": "{epsilon: 10.0, delta: 1.0e-5, max_grad_norm: 1.0}",
    "task.params.fake_labels": "uniform",
    "task.params.batch_size": 64,
}


@pytest.fixture(scope="module")
def public_run(tmp_path_factory, mnist_dir):
    run = tmp_path_factory.mktemp("public") / "run"
    run_experiment(tiny_config(mnist_dir, **PUBLIC), run, progress=False)
    return run


def _newest_global(run):
    _, path = list_checkpoints(run / "checkpoints")[-1]
    return load_checkpoint(path)["federation"]["global_state"]


def test_a_run_starts_from_the_source_runs_newest_global_model(public_run, mnist_dir):
    # Prepare: the source run's final global model, and a fresh run's seeded weights.
    want = _newest_global(public_run)
    fresh = build_experiment(tiny_config(mnist_dir)).federation.global_state
    assert any(not torch.equal(fresh[k], want[k]) for k in want)  # the test can fail
    # Execute: the same recipe on MNIST, started from the run folder and from the file.
    by_folder = build_experiment(tiny_config(mnist_dir, **{"federation.init_from": public_run}))
    ckpt = list_checkpoints(public_run / "checkpoints")[-1][1]
    by_file = build_experiment(tiny_config(mnist_dir, **{"federation.init_from": ckpt}))
    # Assert: both start exactly from the source's global model.
    for fed in (by_folder.federation, by_file.federation):
        assert fed.global_state.keys() == want.keys()
        assert all(torch.equal(fed.global_state[k], want[k]) for k in want)


def test_the_starting_model_is_part_of_the_fingerprint(public_run, mnist_dir):
    # (Unset, it leaves existing runs' fingerprints alone: test_config pins the default's.)
    plain = tiny_config(mnist_dir)
    started = tiny_config(mnist_dir, **{"federation.init_from": public_run})
    assert plain.fingerprint() != started.fingerprint()


def test_another_architecture_is_refused_with_the_fix(public_run, mnist_dir):
    cfg = tiny_config(
        mnist_dir,
        **{
            "federation.init_from": public_run,
            "task.params": "{batch_size: 16, generator_width: 8, discriminator_width: 16}",
        },
    )
    with pytest.raises(ConfigError, match=r"init_from: .* not a model of this task.*shapes"):
        build_experiment(cfg)


def test_a_missing_or_empty_source_says_what_to_give(tmp_path, mnist_dir):
    with pytest.raises(CheckpointError, match="does not exist; give a run folder"):
        build_experiment(tiny_config(mnist_dir, **{"federation.init_from": tmp_path / "nope"}))
    with pytest.raises(CheckpointError, match="holds no checkpoint"):
        build_experiment(tiny_config(mnist_dir, **{"federation.init_from": tmp_path}))


def test_under_dp_a_model_trained_on_the_protected_data_is_refused(mnist_dir, tmp_path):
    # Prepare: a source run trained on MNIST itself, the data the DP run protects.
    private = tmp_path / "private"
    run_experiment(
        tiny_config(mnist_dir, **{"federation.rounds": 1, "eval.every": 0, "eval.final": False}),
        private,
        progress=False,
    )
    cfg = tiny_config(
        mnist_dir,
        **{"federation.init_from": private, **DP_RECIPE},
    )
    with pytest.raises(ConfigError, match="was trained on mnist, the data this run protects"):
        build_experiment(cfg)
    # A lone checkpoint (no config.yaml beside it) cannot show what it saw: refused too.
    ckpt = list_checkpoints(private / "checkpoints")[-1][1]
    lone = tmp_path / "lone" / "round_0000.ckpt"
    lone.parent.mkdir()
    lone.write_bytes(ckpt.read_bytes())
    cfg = cfg.model_copy(
        update={"federation": cfg.federation.model_copy(update={"init_from": str(lone)})}
    )
    with pytest.raises(ConfigError, match="what it was trained on is unknown"):
        build_experiment(cfg)


def test_under_dp_a_model_of_public_data_starts_the_run(public_run, mnist_dir):
    cfg = tiny_config(
        mnist_dir,
        **{"federation.init_from": public_run, **DP_RECIPE},
    )
    want = _newest_global(public_run)
    fed = build_experiment(cfg).federation
    assert all(torch.equal(fed.global_state[k], want[k]) for k in want)


def test_a_client_built_from_the_recipe_needs_no_source_file(public_run, mnist_dir, tmp_path):
    # The client receives the global model with every job, so the recipe's source run
    # need not exist where the client runs.
    moved = tmp_path / "elsewhere"
    public_run.rename(moved)
    try:
        cfg = tiny_config(mnist_dir, **{"federation.init_from": moved})
        side = RecipeClientSide(cfg)
        moved.rename(public_run)
        kit = side.open()  # would raise CheckpointError if it read the folder
        assert kit.task is not None
    finally:
        if moved.exists():
            moved.rename(public_run)


def test_a_resume_and_a_reopened_run_need_not_find_the_source_again(
    public_run, mnist_dir, tmp_path
):
    # Prepare: a run started from a copy of the public run, whose copy is then deleted.
    source = tmp_path / "source"
    shutil.copytree(public_run, source)
    run = tmp_path / "run"
    quiet = {"eval.every": 0, "eval.final": False, "federation.init_from": source}
    run_experiment(tiny_config(mnist_dir, **quiet, **{"federation.rounds": 1}), run, progress=False)
    shutil.rmtree(source)
    # Execute + Assert: its checkpoint replaces the starting weights, so reopening it
    # (fedgen sample / eval) and resuming it work without the source...
    reopened = load_run(run)
    assert reopened.federation.next_round == 1
    run_experiment(
        tiny_config(mnist_dir, **quiet, **{"federation.rounds": 2}),
        run,
        progress=False,
        resume=True,
    )
    assert [r for r, _ in list_checkpoints(run / "checkpoints")][-1] == 1
    # ...while a fresh start still needs it.
    with pytest.raises(CheckpointError, match="does not exist"):
        run_experiment(tiny_config(mnist_dir, **quiet), tmp_path / "again", progress=False)
