"""A round's samples leave the server only after the checkpoint that ends the round."""

from __future__ import annotations

from tiny_federation import tiny_config

from fedgen.engine import callbacks
from fedgen.experiment import run_experiment


def test_samples_are_published_after_the_rounds_checkpoint(mnist_dir, tmp_path, monkeypatch):
    # Prepare: note, when each checkpoint is written, which sample grids are out.
    out_at_checkpoint: dict[int, list[str]] = {}
    save = callbacks.CheckpointCallback.on_round_end

    def on_round_end(self, fed, record):
        out_at_checkpoint[record.round] = sorted(p.name for p in (tmp_path / "samples").glob("*"))
        save(self, fed, record)

    monkeypatch.setattr(callbacks.CheckpointCallback, "on_round_end", on_round_end)
    cfg = tiny_config(mnist_dir, **{"federation.rounds": 2, "eval.every": 1, "eval.final": False})
    # Execute
    run_experiment(cfg, tmp_path, progress=False)
    # Assert: at round r's checkpoint only earlier rounds' grids were out; all are now.
    assert out_at_checkpoint == {0: [".pending"], 1: [".pending", "round_0000.png"]}
    assert sorted(p.name for p in (tmp_path / "samples").glob("round_*")) == [
        "round_0000.png",
        "round_0001.png",
    ]
    assert not (tmp_path / "samples" / ".pending").exists()


def test_pending_samples_are_published_if_checkpointed_else_dropped(mnist_dir, tmp_path):
    # Prepare: grids left pending by an attempt that crashed before its checkpoint (of a
    # round the resumed run does not evaluate again, so nothing overwrites them).
    cfg = tiny_config(mnist_dir, **{"federation.rounds": 1, "eval.every": 1, "eval.final": False})
    run_experiment(cfg, tmp_path, progress=False)
    pending = tmp_path / "samples" / ".pending"
    pending.mkdir()
    (pending / "round_0007.png").write_bytes(b"from an attempt that never checkpointed")
    # ... and one of round 0, whose checkpoint was written before a stop kept it pending.
    (pending / "round_0000_denoising.png").write_bytes(b"of a checkpointed round")
    # Execute: resume for a second round
    cfg2 = tiny_config(mnist_dir, **{"federation.rounds": 2, "eval.every": 1, "eval.final": False})
    run_experiment(cfg2, tmp_path, progress=False, resume=True)
    # Assert: the stale grid was dropped, never published; the resumed round's is out.
    published = sorted(p.name for p in (tmp_path / "samples").glob("round_*"))
    assert published == ["round_0000.png", "round_0000_denoising.png", "round_0001.png"]
    assert not pending.exists()


def test_a_sample_files_round_is_read_from_every_digit():
    from fedgen.engine.callbacks import _round_of

    assert _round_of("round_0007_denoising.png") == 7
    assert _round_of("round_10000.png") == 10000  # past round 9,999: five digits
    assert _round_of("grid.png") is None
