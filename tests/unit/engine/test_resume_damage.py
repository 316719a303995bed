"""Resume after damage: a cut metrics line and a corrupted newest checkpoint cost no data."""

from __future__ import annotations

import json

import pytest
import torch
from tiny_federation import TINY_DPSGD, tiny_config

from fedgen.engine.checkpoint import list_checkpoints, load_checkpoint
from fedgen.errors import CheckpointError
from fedgen.experiment import run_experiment


def _cfg(mnist_dir, rounds: int):
    return tiny_config(
        mnist_dir,
        **{"federation.rounds": rounds, "eval.every": 0, "eval.final": False},
    )


def _final_state(run_dir):
    _, path = list_checkpoints(run_dir / "checkpoints")[-1]
    return load_checkpoint(path)["federation"]["global_state"]


def test_resume_survives_a_cut_metrics_line_and_a_corrupted_newest_checkpoint(mnist_dir, tmp_path):
    # Prepare: an uninterrupted 4-round run, and a 3-round run of the same recipe
    # whose newest checkpoint and last metrics line are then damaged.
    ref = tmp_path / "ref"
    run_experiment(_cfg(mnist_dir, 4), ref, progress=False)
    run = tmp_path / "run"
    run_experiment(_cfg(mnist_dir, 3), run, progress=False)
    newest = list_checkpoints(run / "checkpoints")[-1][1]
    raw = bytearray(newest.read_bytes())
    raw[len(raw) // 2] ^= 0xFF
    newest.write_bytes(bytes(raw))
    metrics = run / "metrics.jsonl"
    metrics.write_text(metrics.read_text()[:-25])  # a kill in the middle of a write
    # Execute: resume to 4 rounds, as the user would, without deleting anything.
    run_experiment(_cfg(mnist_dir, 4), run, progress=False, resume=True)
    # Assert: it fell back to round 1's checkpoint, retrained rounds 2-3, and ends
    # where the uninterrupted run ends, with one intact metrics line per round.
    got, want = _final_state(run), _final_state(ref)
    assert all(torch.equal(got[k], want[k]) for k in want)
    lines = [json.loads(line) for line in metrics.read_text().splitlines()]
    assert [m["round"] for m in lines] == [0, 1, 2, 3]
    ref_lines = [json.loads(line) for line in (ref / "metrics.jsonl").read_text().splitlines()]
    strip = lambda m: {k: v for k, v in m.items() if k != "seconds"}  # noqa: E731
    assert [strip(m) for m in lines] == [strip(m) for m in ref_lines]


def test_resume_with_every_checkpoint_damaged_says_what_to_do(mnist_dir, tmp_path):
    run = tmp_path / "run"
    run_experiment(_cfg(mnist_dir, 2), run, progress=False)
    for _, path in list_checkpoints(run / "checkpoints"):
        path.write_bytes(path.read_bytes()[:100])
    with pytest.raises(CheckpointError, match=r"every checkpoint .* is damaged"):
        run_experiment(_cfg(mnist_dir, 3), run, progress=False, resume=True)


#: Client-level DP on the tiny federation (Poisson q = 0.5, clip, noise).
CLIENT_DP = {
    "strategy.params": "{fraction: 0.5, min_clients: 1, weighted: false, "
    "sampling: poisson, fixed_denominator: true}",
    "transforms": "[{name: clip, params: {max_norm: 1.0}}, "
    "{name: client_dp, params: {noise_multiplier: 1.0, delta: 1.0e-3}}]",
}


def _dp_run(mnist_dir, run, rounds: int, resume: bool = False) -> None:
    cfg = tiny_config(mnist_dir, **{**CLIENT_DP, "federation.rounds": rounds})
    run_experiment(cfg, run, progress=False, resume=resume)


def test_under_client_dp_a_damaged_newest_checkpoint_is_not_skipped(mnist_dir, tmp_path):
    # Prepare: a 2-round client-DP run whose newest checkpoint (round 1) is damaged.
    run = tmp_path / "run"
    _dp_run(mnist_dir, run, 2)
    newest = list_checkpoints(run / "checkpoints")[-1][1]
    newest.write_bytes(newest.read_bytes()[:100])
    # Execute / Assert: round 1 may have gone to the next cohort; training it again would
    # repeat its noise, so the resume is refused with what to do, and nothing is deleted.
    with pytest.raises(CheckpointError, match=r"client-level DP.*Restore the damaged"):
        _dp_run(mnist_dir, run, 3, resume=True)
    assert len(list_checkpoints(run / "checkpoints")) == 2


def test_under_client_dp_the_ledger_catches_a_lost_newest_checkpoint(mnist_dir, tmp_path):
    # Prepare: two 2-round client-DP runs. In one, round 1's checkpoint is gone after it
    # was saved (deleted; a power cut); in the other the server died while saving it,
    # before the rename (its .tmp holds the bytes the ledger logged).
    lost, unsaved = tmp_path / "lost", tmp_path / "unsaved"
    for run in (lost, unsaved):
        _dp_run(mnist_dir, run, 2)
    list_checkpoints(lost / "checkpoints")[-1][1].unlink()
    kept = list_checkpoints(unsaved / "checkpoints")[-1][1]
    kept.rename(kept.with_name(kept.name + ".tmp"))
    # Execute / Assert: the ledger shows round 1 was saved, so it may have been sent:
    # refused. A checkpoint never renamed into place went to no one: the run goes on.
    with pytest.raises(CheckpointError, match=r"ledger shows that round 1's checkpoint"):
        _dp_run(mnist_dir, lost, 3, resume=True)
    _dp_run(mnist_dir, unsaved, 3, resume=True)
    assert [r for r, _ in list_checkpoints(unsaved / "checkpoints")][-1] == 2


def test_under_dpsgd_the_ledger_catches_a_lost_newest_checkpoint(mnist_dir, tmp_path):
    # DP-SGD's noise and batches are keyed by the round too: round 1's checkpoint was
    # saved (so its model may have gone out), then lost; training it again is refused.
    def cfg(rounds: int):
        extra = {"eval.every": 0, "eval.final": False, "federation.rounds": rounds}
        return tiny_config(mnist_dir, **{**TINY_DPSGD, **extra})

    run = tmp_path / "run"
    run_experiment(cfg(2), run, progress=False)
    list_checkpoints(run / "checkpoints")[-1][1].unlink()
    with pytest.raises(CheckpointError, match=r"under DP the run cannot go on after round 0"):
        run_experiment(cfg(3), run, progress=False, resume=True)
