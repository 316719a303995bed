"""Tiny real federations end to end through the `fedgen` command: runs in real processes
(a user's, and Ctrl-C's), the commands that read a run and the refusals in this one."""

from __future__ import annotations

import json
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
from cli_runner import fedgen, fedgen_here

from fedgen.engine.checkpoint import list_checkpoints, load_checkpoint

FAST = [
    "--set",
    "data.sources=[mnist]",
    "--set",
    "data.num_clients=3",
    "--set",
    "federation.local_steps=3",
    "--set",
    "eval.num_quality_samples=200",
    "--set",
    "eval.tstr_samples=500",
    "--set",
    "eval.tstr_epochs=1",
    "--set",
    "eval.classifier_epochs=1",
    "--set",
    "eval.every=1",
    "--set",
    "eval.grid_per_class=4",
]


def final_state(run_dir: Path) -> dict[str, torch.Tensor]:
    _, path = list_checkpoints(run_dir / "checkpoints")[-1]
    return load_checkpoint(path)["federation"]["global_state"]


@pytest.fixture(scope="module")
def finished_runs(tmp_path_factory, mnist_dir) -> dict[str, Path]:
    """A finished 2-round run folder per image task, made once for the module's tests.

    Clients in the command's own process, one thread: the folder is what is tested here
    (the default worker pool is Ctrl-C's below), and on one core the pool's start made
    such a run take 22 s instead of 13."""
    runs = {}
    for task in ("cgan", "cvae"):
        out = tmp_path_factory.mktemp("runs") / task
        fedgen(
            "run",
            "--no-progress",
            "--out",
            str(out),
            "--set",
            f"task.name={task}",
            "--set",
            "federation.rounds=2",
            *("--set", "backend.name=inprocess", "--set", "threads=1"),
            *FAST,
        )
        runs[task] = out
    return runs


@pytest.mark.parametrize("task", ["cgan", "cvae"])
def test_two_round_run_writes_a_complete_run_folder(task, finished_runs, tmp_path):
    out = finished_runs[task]
    # The run folder holds everything the issue lists.
    assert (out / "config.yaml").is_file() and (out / "partition.json").is_file()
    lines = [json.loads(x) for x in (out / "metrics.jsonl").read_text().splitlines()]
    assert [m["round"] for m in lines] == [0, 1]
    for m in lines:
        assert m["bytes_up"] > 0 and m["bytes_down"] > 0 and m["seconds"] > 0
        assert m["examples"] > 0 and any(k.startswith("loss/") for k in m)
        assert "frechet_distance" in m
    summary = json.loads((out / "summary.json").read_text())
    assert summary["status"] == "completed" and summary["rounds"] == 2
    # The summary's byte totals are the rounds' (which are their clients' sums).
    for m in lines:
        per_client = m["bytes_by_client"]
        assert sum(per_client["up"]) == m["bytes_up"] and sum(per_client["down"]) == m["bytes_down"]
    assert summary["bytes_up"] == sum(m["bytes_up"] for m in lines)
    assert summary["bytes_total"] == sum(m["bytes_up"] + m["bytes_down"] for m in lines)
    for key in (
        "tstr_accuracy",
        "tstr_f1",
        "frechet_distance",
        "kid",
        "precision",
        "recall",
        "inception_like_score",
    ):
        assert isinstance(summary[key], float), key
        assert key in summary["descriptions"], key
    assert sorted(p.name for p in (out / "samples").glob("*.png")) == [
        "round_0000.png",
        "round_0001.png",
    ]
    assert len(list_checkpoints(out / "checkpoints")) >= 1
    html = (out / "report.html").read_text()
    assert "tstr_accuracy" in html and "<svg" in html
    # The other commands work on the finished run (one task is enough: they are
    # task-agnostic, and each costs a process start).
    if task != "cgan":
        return
    grid = tmp_path / "grid.png"
    fedgen_here("sample", str(out), "--n", "3", "--out", str(grid))
    from PIL import Image

    assert Image.open(grid).size[0] > 0
    evaluated = json.loads(fedgen_here("eval", str(out), "--tstr-samples", "300").stdout)
    assert 0.0 <= evaluated["tstr_accuracy"] <= 1.0
    rebuilt = tmp_path / "copy"
    shutil.copytree(out, rebuilt)
    (rebuilt / "report.html").unlink()
    fedgen_here("report", str(rebuilt))
    assert (rebuilt / "report.html").is_file()


def test_ctrl_c_then_resume_ends_bit_identical(tmp_path, mnist_dir):
    args = [
        "--no-progress",
        "--set",
        "federation.rounds=4",
        "--set",
        "eval.final=false",
        "--set",
        "eval.every=0",
        # Clients that straggle 1 s each round: rounds 1-3 outlast the SIGINT below
        # on any machine, and the results do not change (the sleep draws no random).
        "--set",
        "faults={straggle: 1.0, straggle_seconds: 1.0}",
        *FAST,
    ]
    # Uninterrupted reference.
    ref = tmp_path / "ref"
    fedgen("run", "--out", str(ref), *args)
    # Interrupted: SIGINT once the first checkpoint is on disk (mid-run, mid-round).
    run = tmp_path / "run"
    proc = subprocess.Popen(
        [sys.executable, "-m", "fedgen.cli", "run", "--out", str(run), *args],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        # A shell runs background jobs with SIGINT ignored, and children inherit that (so
        # Python would not raise KeyboardInterrupt): give the run the default, as a
        # terminal's Ctrl-C would find it.
        preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL),
    )
    deadline = time.time() + 300
    while not list_checkpoints(run / "checkpoints") and time.time() < deadline:
        time.sleep(0.05)
    proc.send_signal(signal.SIGINT)
    _, err = proc.communicate(timeout=300)
    assert proc.returncode == 130, err
    assert "--resume" in err
    summary = json.loads((run / "summary.json").read_text())
    assert summary["status"] == "interrupted"
    fedgen("run", "--resume", str(run), "--no-progress")
    a, b = final_state(ref), final_state(run)
    assert a.keys() == b.keys()
    assert all(torch.equal(a[k], b[k]) for k in a)
    rounds = [json.loads(x)["round"] for x in (run / "metrics.jsonl").read_text().splitlines()]
    assert rounds == [0, 1, 2, 3]


def test_bad_config_and_missing_data_are_clear_errors(tmp_path):
    proc = fedgen_here("run", "--set", "federation.roudns=2", check=False)
    assert proc.returncode == 2
    assert "federation.roudns" in proc.stderr and "rounds" in proc.stderr
    proc = fedgen_here(
        "run",
        "--out",
        str(tmp_path / "x"),
        "--set",
        "data.sources=[kmnist]",
        check=False,
        env_extra={"FEDGEN_DATA_DIR": str(tmp_path / "empty")},
    )
    assert proc.returncode == 2
    assert "fedgen data --download kmnist" in proc.stderr


def test_a_mistyped_strategy_param_is_one_line_naming_the_key(tmp_path, mnist_dir):
    # Prepare: one quick round of the tiny cGAN, clients in sequence, no evaluation.
    quick = [
        *FAST,
        *("--set", "federation.rounds=1", "--set", "federation.local_steps=1"),
        *("--set", "eval.every=0", "--set", "eval.final=false", "--set", "backend.name=inprocess"),
        *("--set", "task.params={batch_size: 16, generator_width: 8, discriminator_width: 8}"),
    ]
    # Execute: a word where server_lr takes a number, then a number in exponent form.
    bad = fedgen_here(
        "run", "--no-progress", "--out", str(tmp_path / "bad"), *quick,
        "--set", "strategy.params.server_lr=abc", check=False,
    )  # fmt: skip
    ok = fedgen(
        "run", "--no-progress", "--out", str(tmp_path / "ok"), *quick,
        "--set", "strategy.params.server_lr=1e-1",
    )  # fmt: skip
    # Assert: exit 2 before anything ran, no traceback, one line with key, value and type.
    assert bad.returncode == 2 and "Traceback" not in bad.stderr
    [line] = [x for x in bad.stderr.splitlines() if "server_lr" in x]
    assert "strategy.params.server_lr: " in line
    assert "(got 'abc'; expected float)" in line
    assert not (tmp_path / "bad").exists()
    assert ok.returncode == 0
    assert json.loads((tmp_path / "ok" / "summary.json").read_text())["status"] == "completed"


def test_resume_from_corrupted_checkpoint_says_what_to_do(tmp_path, finished_runs):
    # A copy of a finished run whose every checkpoint has a flipped byte (a damaged
    # newest one alone is skipped for the one before it).
    run = tmp_path / "run"
    shutil.copytree(finished_runs["cgan"], run)
    for _, path in list_checkpoints(run / "checkpoints"):
        raw = bytearray(path.read_bytes())
        raw[-10] ^= 0xFF
        path.write_bytes(bytes(raw))
    proc = fedgen_here("run", "--resume", str(run), check=False)
    assert proc.returncode == 2
    assert "corrupted" in proc.stderr and "delete it" in proc.stderr


def test_data_command_lists_sources_and_how_to_get_them(tmp_path):
    proc = fedgen_here("data", "--data-dir", str(tmp_path))
    assert "fashion-mnist" in proc.stdout and "mnist" in proc.stdout
    assert "fedgen data --download mnist" in proc.stdout
