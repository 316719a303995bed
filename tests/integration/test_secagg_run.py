"""Client-level DP with secure aggregation through the real `fedgen` command (subprocess)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from cli_runner import fedgen, fedgen_here
from opacus.accountants import RDPAccountant

ROOT = Path(__file__).resolve().parents[2]

TINY = [
    "data.num_clients=4",
    "data.partition.kind=iid",
    "data.partition.params={}",
    "task.params={batch_size: 32, generator_width: 8, discriminator_width: 8}",
    "federation.rounds=2",
    "federation.local_steps=2",
    "backend.name=inprocess",
    "eval.every=0",
    "eval.final=false",
    "threads=1",
    # Every client every round (Poisson at q=1): no cohort of one for secagg to fail.
    "strategy.params={fraction: 1.0, min_clients: 1, weighted: false, sampling: poisson, "
    "fixed_denominator: true}",
    # The recipe's [clip, client_dp, secagg], with a fixed z and a delta below 1/4.
    "transforms=[{name: clip, params: {max_norm: 1.0}}, "
    "{name: client_dp, params: {noise_multiplier: 1.5, delta: 1.0e-3}}, "
    "{name: secagg, params: {dropout_rate: 0.25}}]",
]


def test_clip_dp_secagg_recipe_runs_two_rounds_writing_epsilon_and_secagg_metrics(
    tmp_path, mnist_dir
):
    # Prepare
    out = tmp_path / "dp_secagg"
    sets = [x for item in TINY for x in ("--set", item)]
    # Execute
    fedgen("run", "configs/mnist_cgan_dp_secagg.yaml", "--no-progress", "--out", str(out), *sets)
    # Assert
    lines = [json.loads(x) for x in (out / "metrics.jsonl").read_text().splitlines()]
    assert [m["round"] for m in lines] == [0, 1]
    oracle = RDPAccountant()
    for m in lines:
        oracle.step(noise_multiplier=1.5, sample_rate=1.0)
        assert m["epsilon"] == pytest.approx(oracle.get_epsilon(delta=1e-3))
        assert "round_failed" not in m
        assert m["secagg/clip_range"] == 1.0
        assert m["clientleveldp/noise_std"] == pytest.approx(1.5 * 1.0 / 4)
        # Client-level DP assumes the cohort secret: nothing that counts it is released.
        assert not {"clients", "failures", "examples", "bytes_up", "secagg/survivors"} & set(m)
    summary = json.loads((out / "summary.json").read_text())
    assert summary["status"] == "completed" and summary["epsilon"] == lines[-1]["epsilon"]
    # The ledger holds the digests of the unmasked sums, never an individual update.
    verified = fedgen_here("ledger", "verify", str(out))
    assert "2 rounds" in verified.stdout and "0 updates" in verified.stdout
