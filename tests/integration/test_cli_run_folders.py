"""`fedgen run` never overwrites another run's results and says what to do instead: a
finished run folder without checkpoints, a file as --out, a run folder as the recipe,
--resume with a recipe or --out, a resume that turns the ledger off, a resume while another
process writes the run (a real run)."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest
import typer
from cli_runner import TINY_RUN
from lock_holder import hold_elsewhere
from typer.testing import CliRunner

from fedgen.cli import app
from fedgen.engine.keystore import KeyStore
from fedgen.ledger import LEDGER_FILE, Ledger


@pytest.fixture(scope="module")
def run_dir(tmp_path_factory, mnist_dir) -> Path:
    """A finished one-round cgan run (no evaluation) on three MNIST clients."""
    out = tmp_path_factory.mktemp("cli-run-folders") / "run"
    first = fedgen("run", "--no-progress", "--out", str(out), *TINY_RUN)
    assert first.exit_code == 0, first.output[-1500:]
    return out


def fedgen(*args: str):
    """The CLI in this process (a subprocess would import torch again for each refusal)."""
    return CliRunner().invoke(app, list(args))


def _refused(result, *said: str) -> None:
    assert result.exit_code not in (0, None) and result.exception is not None
    assert isinstance(result.exception, SystemExit), result.exception  # no traceback
    for text in said:
        assert text in " ".join(result.output.split()), result.output[-2000:]


def test_a_finished_run_without_checkpoints_is_not_overwritten(run_dir, tmp_path):
    kept = tmp_path / "kept"
    shutil.copytree(run_dir, kept)
    shutil.rmtree(kept / "checkpoints")  # deleted to save space; the results stay
    before = {p.name: p.read_bytes() for p in kept.iterdir() if p.is_file()}
    proc = fedgen("run", "--no-progress", "--out", str(kept), *TINY_RUN)
    _refused(proc, "holds another run's results", "choose another --out")
    assert {p.name: p.read_bytes() for p in kept.iterdir() if p.is_file()} == before


def test_a_file_as_out_is_refused_before_anything_loads(tmp_path):
    afile = tmp_path / "afile"
    afile.write_text("mine")
    proc = fedgen("run", "--no-progress", "--out", str(afile), *TINY_RUN)
    _refused(proc, "is a file, not a folder")
    assert afile.read_text() == "mine"


def test_a_folder_under_a_file_is_refused_before_anything_loads(tmp_path):
    afile = tmp_path / "afile"
    afile.write_text("mine")
    proc = fedgen("run", "--no-progress", "--out", str(afile / "run"), *TINY_RUN)
    _refused(proc, "cannot be made", "is a file, not a folder")
    assert afile.read_text() == "mine"


def test_out_holding_the_recipe_itself_is_refused_and_the_recipe_kept(tmp_path):
    # Prepare: a hand-written recipe in the folder the run is pointed at.
    recipe = tmp_path / "config.yaml"
    recipe.write_text("# my notes\nfederation: {rounds: 1}\n")
    # Execute
    proc = fedgen("run", str(recipe), "--no-progress", "--out", str(tmp_path), *TINY_RUN)
    # Assert
    _refused(proc, "would overwrite the recipe", "a folder of its own")
    assert recipe.read_text() == "# my notes\nfederation: {rounds: 1}\n"


def test_a_run_folder_given_as_the_recipe_points_to_resume(run_dir):
    proc = fedgen("run", str(run_dir))
    _refused(proc, "is a run folder, not a recipe", f"--resume {run_dir}")


def test_resume_refuses_a_recipe_an_out_folder_or_a_ledger_switch(run_dir, tmp_path):
    recipe = fedgen("run", "--resume", str(run_dir), "configs/x.yaml")
    _refused(recipe, "drop the recipe argument and --out")
    elsewhere = fedgen("run", "--resume", str(run_dir), "--out", str(tmp_path))
    _refused(elsewhere, "drop the recipe argument and --out")
    off = fedgen("run", "--resume", str(run_dir), "--set", "ledger=false")
    _refused(off, "cannot turn its ledger on or off")
    assert not any(tmp_path.iterdir())


def test_an_interruption_before_any_checkpoint_says_to_start_again(tmp_path, capsys):
    from fedgen.cli import _say_summary

    with pytest.raises(typer.Exit):
        _say_summary({"status": "interrupted", "rounds": 0}, tmp_path, "fedgen run --resume x")
    said = capsys.readouterr().err
    assert "nothing to resume" in said and f"--out {tmp_path} is free" in said
    assert "--resume" not in said


def test_an_interruption_names_the_round_a_resume_trains_from(tmp_path, capsys):
    from fedgen.cli import _say_summary
    from fedgen.engine.checkpoint import checkpoint_path

    # Prepare: 5 rounds done, checkpoints every 3 rounds (the newest is round 2's)
    checkpoint_path(tmp_path / "checkpoints", 2).parent.mkdir()
    checkpoint_path(tmp_path / "checkpoints", 2).write_bytes(b"")
    # Execute
    with pytest.raises(typer.Exit):
        _say_summary({"status": "interrupted", "rounds": 5}, tmp_path, "fedgen run --resume x")
    # Assert
    said = " ".join(capsys.readouterr().err.split())
    assert "interrupted after round 4; the newest checkpoint is round 2's" in said
    assert "a resume trains from round 3: fedgen run --resume x" in said


def test_sample_on_a_run_whose_checkpoints_are_all_damaged_does_not_advise_resuming(
    run_dir, tmp_path
):
    damaged = tmp_path / "damaged"
    shutil.copytree(run_dir, damaged)
    for ckpt in (damaged / "checkpoints").glob("*.ckpt"):
        ckpt.write_bytes(ckpt.read_bytes()[:100])  # cut off, as a full disk leaves it
    result = fedgen("sample", str(damaged), "--n", "1", "--out", str(tmp_path / "g.png"))
    _refused(result, "is damaged, so the run has no model to read")
    assert "--resume" not in result.output


def test_a_run_that_failed_exits_non_zero_and_says_why(mnist_dir, tmp_path):
    # Every client sends NaN: no round can be used, and the shell must see it.
    result = fedgen(
        "run", "--no-progress", "--out", str(tmp_path / "nan"), *TINY_RUN, "--set=faults.nan=1.0"
    )
    assert result.exit_code == 1, result.output[-2000:]
    said = " ".join(result.output.split())
    assert "failed after 1 round(s)" in said and "initial weights" in said


def _files(folder: Path) -> dict[str, bytes]:
    return {str(p.relative_to(folder)): p.read_bytes() for p in folder.rglob("*") if p.is_file()}


@pytest.mark.parametrize("held", ["folder", "run id"])
def test_a_resume_while_another_process_writes_the_run_is_refused(run_dir, tmp_path, held):
    # Prepare: a copy of the finished run (its own folder, the run's id), and another
    # process holding what a running fedgen holds: the folder, or the run id in the key
    # store (a second copy of the folder being resumed).
    run = tmp_path / "run"
    shutil.copytree(run_dir, run)
    with Ledger.open(run / LEDGER_FILE, readonly=True) as ledger:
        run_id = str(ledger.run_start["run_id"])
    target = run if held == "folder" else KeyStore()._path(run_id, ".lock")
    before = _files(run)
    other = hold_elsewhere(target)
    try:
        # Execute
        proc = fedgen("run", "--resume", str(run), "--no-progress")
    finally:
        other.kill()
        other.wait()
    # Assert: refused with what to do, and nothing in the folder changed.
    if held == "folder":
        _refused(proc, f"run folder {run}", "being written by another process", "Ctrl-C keeps")
    else:  # the advice names the folder the run's signed heads follow
        said = (f"run {run_id[:12]}", "being written by another process", f"follow {run_dir}")
        _refused(proc, *said)
    assert _files(run) == before


@pytest.mark.parametrize(
    "name, text, said",
    [
        ("config.yaml", "mine: [1, 2\n", "config.yaml (not a fedgen run's recipe)"),
        ("downstream.json", "{}", "downstream.json (a downstream run's results)"),
        ("summary.json", '{"rounds": 3}', "summary.json (another run's results)"),
    ],
)
def test_a_folder_holding_files_a_run_would_overwrite_is_refused(tmp_path, name, text, said):
    # Prepare: a folder without checkpoints or metrics, holding a file the run writes too.
    folder = tmp_path / "project"
    folder.mkdir()
    (folder / name).write_text(text)
    # Execute
    proc = fedgen("run", "--no-progress", "--out", str(folder), *TINY_RUN)
    # Assert: refused, naming the file, and the file is as it was.
    _refused(proc, said, "choose another --out")
    assert [p.name for p in folder.iterdir()] == [name] and (folder / name).read_text() == text
