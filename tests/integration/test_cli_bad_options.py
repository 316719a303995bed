"""Out-of-range options of `fedgen sample` and `fedgen eval` on a real run folder are
clear one-line errors, not tracebacks."""

from __future__ import annotations

from pathlib import Path

import pytest
from cli_runner import fedgen


@pytest.fixture(scope="module")
def run_dir(tmp_path_factory, mnist_dir) -> Path:
    """A finished one-round cgan run (no evaluation) on three MNIST clients."""
    out = tmp_path_factory.mktemp("cli-bad-options") / "run"
    fedgen(
        "run",
        "--no-progress",
        "--out",
        str(out),
        "--set",
        "data.sources=[mnist]",
        "--set",
        "data.num_clients=3",
        "--set",
        "federation.rounds=1",
        "--set",
        "federation.local_steps=2",
        "--set",
        "eval.every=0",
        "--set",
        "eval.final=false",
        "--set",
        "eval.grid_per_class=2",
    )
    return out


def test_sample_with_zero_images_per_class_is_a_clear_error(run_dir, tmp_path):
    proc = fedgen("sample", str(run_dir), "--n", "0", "--out", str(tmp_path / "g.png"), check=False)
    assert proc.returncode != 0
    assert "Traceback" not in proc.stderr + proc.stdout
    assert "--n" in proc.stderr and "1" in proc.stderr
    assert not (tmp_path / "g.png").exists()


def test_eval_with_too_few_tstr_samples_is_a_clear_error(run_dir):
    proc = fedgen("eval", str(run_dir), "--tstr-samples", "5", check=False)
    assert proc.returncode != 0
    assert "Traceback" not in proc.stderr + proc.stdout
    assert "--tstr-samples" in proc.stderr and "10" in proc.stderr
    assert not (run_dir / "eval.json").exists()


def test_a_mistyped_command_suggests_the_nearest_one_once():
    proc = fedgen("evaluate", check=False)
    assert proc.returncode == 2
    assert proc.stderr.count("Did you mean 'eval'?") == 1, proc.stderr
