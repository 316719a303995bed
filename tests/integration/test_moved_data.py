"""A run whose data sets moved (another machine, a colleague's copy) goes on from there."""

from __future__ import annotations

from tiny_federation import tiny_config

from fedgen.config import load_config
from fedgen.engine.checkpoint import list_checkpoints, load_checkpoint, save_checkpoint
from fedgen.experiment import run_experiment
from fedgen.ledger.verify import verify_run


def test_a_run_resumes_with_its_data_elsewhere_and_its_ledger_verifies(mnist_dir, tmp_path):
    # Prepare: a 1-round run, then its data reached through another path.
    out = tmp_path / "run"
    run_experiment(tiny_config(mnist_dir, **{"federation.rounds": 1}), out, progress=False)
    moved = tmp_path / "data-elsewhere"
    moved.symlink_to(mnist_dir, target_is_directory=True)
    # Execute
    cfg = load_config(out / "config.yaml", [f"data.data_dir={moved}", "federation.rounds=2"])
    summary = run_experiment(cfg, out, progress=False, resume=True)
    # Assert
    assert summary["rounds"] == 2
    assert not verify_run(out).problems


def test_a_checkpoint_from_before_names_its_data_dir_and_still_resumes(mnist_dir, tmp_path):
    # Prepare: a checkpoint carrying the fingerprint runs wrote before 2026-12-07, which
    # hashed data.data_dir as well.
    cfg = tiny_config(mnist_dir, **{"federation.rounds": 1, "ledger": False})
    out = tmp_path / "run"
    run_experiment(cfg, out, progress=False)
    _, newest = list_checkpoints(out / "checkpoints")[-1]
    payload = load_checkpoint(newest)
    payload["fingerprint"] = cfg.fingerprints()[1]
    save_checkpoint(newest, payload)
    # Execute
    again = load_config(out / "config.yaml", ["federation.rounds=2"])
    summary = run_experiment(again, out, progress=False, resume=True)
    # Assert
    assert summary["rounds"] == 2
