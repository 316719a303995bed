"""A tiny real federation with ``tensorboard: true``: its event file holds every round's
scalars as metrics.jsonl records them and each evaluation's sample grid, read back with
TensorBoard's own EventAccumulator."""

from __future__ import annotations

import json
import sys

import pytest
from tiny_federation import tiny_config

from fedgen.config import ExperimentConfig, load_config
from fedgen.engine.tensorboard_callback import TensorBoardCallback
from fedgen.errors import ConfigError
from fedgen.experiment import run_experiment

event_accumulator = pytest.importorskip(
    "tensorboard.backend.event_processing.event_accumulator",
    reason="needs the tensorboard package (pip install 'fedgen[tensorboard]')",
)


@pytest.fixture(scope="module")
def run_dir(tmp_path_factory, mnist_dir):
    out = tmp_path_factory.mktemp("tensorboard") / "run"
    settings = {
        "tensorboard": "true",
        "eval.every": 2,  # rounds 0..2: evaluated after round 1 only
        "eval.final": "false",
        "eval.num_quality_samples": 50,
        "eval.grid_per_class": 2,
        "ledger": "false",
    }
    run_experiment(tiny_config(mnist_dir, **settings), out, progress=False)
    return out


def test_the_event_file_holds_each_rounds_scalars_and_the_sample_grid(run_dir):
    # Execute
    events = event_accumulator.EventAccumulator(
        str(run_dir / "tensorboard"), size_guidance={event_accumulator.SCALARS: 0}
    )
    events.Reload()

    # Assert: every number of metrics.jsonl, at its round, in TensorBoard.
    rows = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]
    tags = set(events.Tags()["scalars"])
    for row in rows:
        for key, value in row.items():
            if key == "round" or not isinstance(value, int | float):
                continue
            assert key in tags, key
            logged = {e.step: e.value for e in events.Scalars(key)}
            assert logged[row["round"]] == pytest.approx(value, rel=1e-6), key
    assert {"loss/generator", "bytes_up", "frechet_distance"} <= tags
    assert [e.step for e in events.Scalars("loss/generator")] == [0, 1, 2]
    # The evaluated round's grid, at its pixel size.
    images = events.Images("samples")
    assert [image.step for image in images] == [1]
    assert images[0].width > 0 and images[0].height > 0


def test_tensorboard_is_off_by_default_and_leaves_the_fingerprint_alone():
    assert ExperimentConfig().tensorboard is False
    on = load_config(None, ["tensorboard=true"])
    assert on.tensorboard is True and on.fingerprint() == load_config().fingerprint()


def test_without_the_package_the_recipe_is_refused_with_the_fix(monkeypatch, tmp_path):
    monkeypatch.setitem(sys.modules, "torch.utils.tensorboard", None)  # import fails
    with pytest.raises(ConfigError, match=r"fedgen\[tensorboard\]"):
        TensorBoardCallback(tmp_path, tmp_path)
