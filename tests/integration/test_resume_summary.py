"""summary.json after a resume: the whole run's time, and what its figures were computed on."""

from __future__ import annotations

import json

from tiny_federation import tiny_config

from fedgen.config import load_config
from fedgen.experiment import run_experiment


def test_a_finished_run_resumed_keeps_its_time_and_what_its_figures_mean(mnist_dir, tmp_path):
    # Prepare: a finished 2-round run with its final evaluation.
    out = tmp_path / "run"
    first = run_experiment(tiny_config(mnist_dir, **{"federation.rounds": 2}), out, progress=False)
    # Execute: resumed, it has nothing left to train or evaluate.
    again = run_experiment(load_config(out / "config.yaml"), out, progress=False, resume=True)
    # Assert: the time is the run's, not this part's (about 0), and the figures still
    # say what they were computed on.
    lines = [json.loads(x) for x in (out / "metrics.jsonl").read_text().splitlines()]
    rounds_and_evals = sum(m["seconds"] + m.get("eval_seconds", 0.0) for m in lines)
    assert again["seconds"] >= rounds_and_evals > 0.5 * first["seconds"]
    assert again["tstr_accuracy"] == first["tstr_accuracy"]
    assert again["evaluated_model"] == first["evaluated_model"]
    assert again["descriptions"] == first["descriptions"]
