"""Out-of-range options of `fedgen sample` and `fedgen eval` on a real run folder, and
`fedgen report` on a folder that is not a run's, are clear one-line errors, not tracebacks."""

from __future__ import annotations

from pathlib import Path

import pytest
from cli_runner import TINY_RUN, fedgen_here
from typer.testing import CliRunner

from fedgen.cli import app


@pytest.fixture(scope="module")
def run_dir(tmp_path_factory, mnist_dir) -> Path:
    """A finished one-round cgan run (no evaluation) on three MNIST clients."""
    out = tmp_path_factory.mktemp("cli-bad-options") / "run"
    fedgen_here("run", "--no-progress", "--out", str(out), *TINY_RUN)
    return out


def test_sample_with_zero_images_per_class_is_a_clear_error(run_dir, tmp_path):
    proc = fedgen_here(
        "sample", str(run_dir), "--n", "0", "--out", str(tmp_path / "g.png"), check=False
    )
    assert proc.returncode != 0
    assert "Traceback" not in proc.stderr + proc.stdout
    assert "--n" in proc.stderr and "1" in proc.stderr
    assert not (tmp_path / "g.png").exists()


def test_eval_with_too_few_tstr_samples_is_a_clear_error(run_dir):
    proc = fedgen_here("eval", str(run_dir), "--tstr-samples", "5", check=False)
    assert proc.returncode != 0
    assert "Traceback" not in proc.stderr + proc.stdout
    assert "--tstr-samples" in proc.stderr and "10" in proc.stderr
    assert not (run_dir / "eval.json").exists()


def test_eval_into_a_folder_it_cannot_write_prints_the_figures_then_a_clear_error(
    run_dir, monkeypatch
):
    # Prepare: the run folder refuses writes (a read-only copy; root ignores chmod).
    from fedgen import files

    def refuse(path, text):
        raise PermissionError(13, "Permission denied", str(path))

    monkeypatch.setattr(files, "write_text_atomic", refuse)
    # Execute
    proc = fedgen_here("eval", str(run_dir), "--tstr-samples", "10", check=False)
    # Assert: the figures the evaluation cost are printed, and the error says why.
    assert proc.returncode != 0
    assert "Traceback" not in proc.stderr + proc.stdout
    assert '"tstr_accuracy"' in proc.stdout
    assert "could not write" in proc.stderr and "Permission denied" in proc.stderr


def test_a_mistyped_command_suggests_the_nearest_one_once():
    proc = fedgen_here("evaluate", check=False)
    assert proc.returncode == 2
    assert proc.stderr.count("Did you mean 'eval'?") == 1, proc.stderr


def test_report_refuses_a_folder_that_is_not_a_run_and_leaves_it_alone(tmp_path):
    (tmp_path / "report.html").write_text("mine")

    result = CliRunner().invoke(app, ["report", str(tmp_path)])

    assert result.exit_code == 2 and isinstance(result.exception, SystemExit)
    text = " ".join(result.output.split())
    assert f"{tmp_path} is not a run folder" in text
    assert "config.yaml" in text and "metrics.jsonl" in text and "fedgen run" in text
    assert [p.name for p in tmp_path.iterdir()] == ["report.html"]
    assert (tmp_path / "report.html").read_text() == "mine"


def test_report_rewrites_a_real_runs_report(run_dir):
    (run_dir / "report.html").unlink()

    result = CliRunner().invoke(app, ["report", str(run_dir)])

    assert result.exit_code == 0, result.output
    assert "<html" in (run_dir / "report.html").read_text()
