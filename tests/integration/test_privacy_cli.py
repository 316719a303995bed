"""`fedgen privacy ...` and a tiny DP run through the real `fedgen` command (subprocesses)."""

from __future__ import annotations

import json

import pytest
from cli_runner import fedgen, fedgen_here
from opacus.accountants import RDPAccountant
from typer.testing import CliRunner

from fedgen.cli import app

TINY = [
    "--set",
    "data.sources=[mnist]",
    "--set",
    "data.num_clients=4",
    "--set",
    "data.partition.kind=iid",
    "--set",
    "data.partition.params={}",
    "--set",
    "task.params={batch_size: 32, generator_width: 8, discriminator_width: 8}",
    "--set",
    "federation.local_steps=2",
    "--set",
    "backend.name=inprocess",
    "--set",
    "eval.every=0",
    "--set",
    "eval.final=false",
    "--set",
    "threads=1",
]
CLIENT_DP = [
    "--set",
    "strategy.params={fraction: 0.5, min_clients: 1, weighted: false, sampling: poisson, "
    "fixed_denominator: true}",
    "--set",
    "transforms=[{name: clip, params: {max_norm: 0.5}}, "
    "{name: client_dp, params: {noise_multiplier: 1.5, delta: 1e-3}}]",
]


def privacy(*args: str) -> tuple[int, str, str]:
    """`fedgen privacy ...` in this process (the arithmetic commands start no run)."""
    result = CliRunner().invoke(app, ["privacy", *args])
    return result.exit_code, result.stdout, result.stderr


def test_privacy_epsilon_prints_opacus_figure_as_json():
    code, stdout, _ = privacy(
        "epsilon", "--noise-multiplier", "1.1", "--sample-rate", "0.01",
        "--rounds", "1000", "--delta", "1e-5",
    )  # fmt: skip
    assert code == 0
    out = json.loads(stdout)
    oracle = RDPAccountant()
    oracle.history = [(1.1, 0.01, 1000)]
    assert out == {"epsilon": pytest.approx(oracle.get_epsilon(delta=1e-5)), "delta": 1e-5}


def test_privacy_noise_round_trips_through_privacy_epsilon():
    common = ["--sample-rate", "0.4", "--rounds", "20", "--delta", "1e-5", "--accountant", "rdp"]
    z = json.loads(privacy("noise", "--epsilon", "10", *common)[1])
    assert z["epsilon"] <= 10 and z["delta"] == 1e-5
    back = json.loads(
        fedgen_here(
            "privacy", "epsilon", "--noise-multiplier", str(z["noise_multiplier"]), *common
        ).stdout
    )
    assert back["epsilon"] == pytest.approx(z["epsilon"]) and back["epsilon"] > 9.9


@pytest.mark.parametrize(
    ("args", "needle"),
    [
        (["noise", "--epsilon", "0", "--delta", "1e-5"], "epsilon must be a finite number > 0"),
        (["noise", "--epsilon", "-2", "--delta", "1e-5"], "epsilon must be a finite number > 0"),
        (["epsilon", "--noise-multiplier", "1", "--delta", "1"], "delta must be in (0, 1)"),
        (["epsilon", "--noise-multiplier", "1", "--delta", "0"], "delta must be in (0, 1)"),
        (["noise", "--epsilon", "1e-7", "--delta", "1e-5"], "cannot be met"),
    ],
)
def test_privacy_bad_input_is_a_clear_error(args, needle):
    cmd, *rest = args
    proc = fedgen_here("privacy", cmd, *rest, "--sample-rate", "1.0", "--rounds", "1", check=False)
    assert proc.returncode == 2
    assert needle in proc.stderr


def test_two_round_client_dp_run_writes_epsilon_everywhere(tmp_path, mnist_dir):
    out = tmp_path / "dp"
    fedgen("run", "--no-progress", "--out", str(out), "--set", "federation.rounds=2", *TINY,
           *CLIENT_DP)  # fmt: skip
    lines = [json.loads(x) for x in (out / "metrics.jsonl").read_text().splitlines()]
    assert [m["round"] for m in lines] == [0, 1]
    oracle = RDPAccountant()
    for m in lines:
        oracle.step(noise_multiplier=1.5, sample_rate=0.5)
        assert m["epsilon"] == pytest.approx(oracle.get_epsilon(delta=1e-3)) and m["delta"] == 1e-3
    summary = json.loads((out / "summary.json").read_text())
    assert summary["status"] == "completed"
    assert summary["epsilon"] == lines[-1]["epsilon"] and summary["delta"] == 1e-3
    assert summary["privacy_unit"] == "client" and summary["accountant"] == "rdp"
    # The run's time follows its cohorts' sizes, as the withheld per-round seconds do.
    assert summary["seconds"] is None and all("seconds" not in m for m in lines)
    html = (out / "report.html").read_text()
    assert "<h2>Privacy</h2>" in html and "differentially private" in html
    # Each client's label counts and size are its data's, which DP does not cover.
    partition = json.loads((out / "partition.json").read_text())
    assert not {"counts", "sizes", "domain_counts"} & set(partition) and partition["withheld"]
    assert "Withheld: each client" in html and "label counts and size" in html


def test_a_run_out_of_budget_stops_cleanly_and_says_why(tmp_path, mnist_dir):
    out = tmp_path / "budget"
    # z=1.5, q=0.5, delta=1e-3 spends epsilon 2.06 in 2 rounds and 2.50 in 3: budget 2.3.
    proc = fedgen(
        "run", "--no-progress", "--out", str(out), "--set", "federation.rounds=6", *TINY,
        CLIENT_DP[0], CLIENT_DP[1], CLIENT_DP[2],
        "transforms=[{name: clip, params: {max_norm: 0.5}}, "
        "{name: client_dp, params: {noise_multiplier: 1.5, epsilon: 2.3, delta: 1e-3}}]",
    )  # fmt: skip
    summary = json.loads((out / "summary.json").read_text())
    assert summary["status"] == "budget_exhausted"
    assert summary["rounds"] == 2 and summary["planned_rounds"] == 6
    assert summary["epsilon"] <= 2.3 and "budget exhausted" in summary["stop_reason"]
    assert "stopped after" in proc.stderr
    lines = (out / "metrics.jsonl").read_text().splitlines()
    assert len(lines) == summary["rounds"]


def test_a_noise_multiplier_without_clipping_fails_the_run_before_round_one(tmp_path, mnist_dir):
    proc = fedgen_here(
        "run", "--no-progress", "--out", str(tmp_path / "x"), *TINY, CLIENT_DP[0], CLIENT_DP[1],
        "--set", "transforms=[{name: client_dp, params: {noise_multiplier: 1.0}}]",
        check=False,
    )  # fmt: skip
    assert proc.returncode == 2
    assert "no clip bounds the updates" in proc.stderr
    assert not (tmp_path / "x" / "metrics.jsonl").exists()
