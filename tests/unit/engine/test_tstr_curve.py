"""``eval.tstr_every``: a long run records TSTR along the way, not only after its last round."""

from __future__ import annotations

import json

from tiny_federation import tiny_config

from fedgen.config import EvalConfig
from fedgen.experiment import run_experiment


def test_tstr_is_measured_every_tstr_every_rounds(mnist_dir, tmp_path):
    assert EvalConfig().tstr_every == 0  # by default TSTR waits for the last round
    cfg = tiny_config(
        mnist_dir,
        **{
            "federation.rounds": 3,
            "federation.local_steps": 1,
            "eval.every": 0,
            "eval.tstr_every": 2,
            # No final evaluation either, so the one TSTR (the test's cost) is tstr_every's.
            "eval.final": False,
            "eval.num_quality_samples": 100,
            "eval.tstr_samples": 200,
            "eval.tstr_epochs": 1,
        },
    )
    run_experiment(cfg, tmp_path / "run", progress=False)
    lines = [json.loads(x) for x in (tmp_path / "run" / "metrics.jsonl").read_text().splitlines()]
    # Neither periodic (every 0) nor final evaluations: the one round evaluated is the
    # second (index 1, tstr_every), with TSTR, the quality figures and its sample grid.
    assert [m["round"] for m in lines] == [0, 1, 2]
    assert [m["round"] for m in lines if "frechet_distance" in m] == [1]
    assert 0.0 <= lines[1]["tstr_accuracy"] <= 1.0 and "tstr_accuracy" not in lines[2]
    assert [p.name for p in (tmp_path / "run" / "samples").glob("*.png")] == ["round_0001.png"]
