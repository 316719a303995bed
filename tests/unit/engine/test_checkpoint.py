import pytest
import torch

from fedgen.engine.checkpoint import (
    checkpoint_path,
    list_checkpoints,
    load_checkpoint,
    prune_checkpoints,
    save_checkpoint,
)
from fedgen.errors import CheckpointError


def payload():
    return {"format": 1, "state": {"w": torch.arange(6.0).view(2, 3)}, "history": [{"a": 1}]}


def test_round_trip_is_exact(tmp_path):
    path = save_checkpoint(checkpoint_path(tmp_path, 3), payload())
    back = load_checkpoint(path)
    assert torch.equal(back["state"]["w"], payload()["state"]["w"])
    assert back["history"] == [{"a": 1}]
    assert list_checkpoints(tmp_path) == [(3, path)]


def test_checkpoints_are_readable_by_their_owner_only(tmp_path):
    # They hold the secret DP noise key (fedgen.privacy.noise_key).
    path = save_checkpoint(checkpoint_path(tmp_path, 0), payload())
    assert path.stat().st_mode & 0o777 == 0o600


def test_a_leftover_temporary_file_or_link_is_not_reused(tmp_path):
    # Prepare: a crashed write left a world-readable .tmp; another, a link to a file
    # elsewhere, planted where the next write goes.
    path = checkpoint_path(tmp_path, 0)
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_bytes(b"left over")
    tmp.chmod(0o644)
    elsewhere = tmp_path / "elsewhere"
    elsewhere.write_bytes(b"not a checkpoint")
    # Execute / Assert: written owner-only all the same
    save_checkpoint(path, payload())
    assert path.stat().st_mode & 0o777 == 0o600 and not tmp.exists()
    other = checkpoint_path(tmp_path, 1)
    other.with_name(other.name + ".tmp").symlink_to(elsewhere)
    save_checkpoint(other, payload())
    assert elsewhere.read_bytes() == b"not a checkpoint"
    assert other.stat().st_mode & 0o777 == 0o600 and not other.is_symlink()


def test_a_write_that_fails_before_the_ledger_sees_it_leaves_no_temporary_file(
    tmp_path, monkeypatch
):
    import os

    def full_disk(fd: int) -> None:
        raise OSError("No space left on device")

    monkeypatch.setattr(os, "fsync", full_disk)
    with pytest.raises(OSError, match="No space left"):
        save_checkpoint(checkpoint_path(tmp_path, 0), payload())
    assert list(tmp_path.iterdir()) == []


def test_bytes_the_ledger_may_have_logged_stay_when_signing_fails(tmp_path):
    # The ledger commits the checkpoint entry, then signing its head fails: the .tmp
    # keeps the logged bytes, which a resume reads as a round that went to no one.
    from fedgen.ledger import file_digest

    path = checkpoint_path(tmp_path, 0)
    logged = []

    def log_then_fail(digest: str) -> None:
        logged.append(digest)
        raise OSError("the key store could not be written")

    with pytest.raises(OSError, match="key store"):
        save_checkpoint(path, payload(), before_replace=log_then_fail)
    tmp = path.with_name(path.name + ".tmp")
    assert not path.exists() and file_digest(tmp) == logged[0]


def test_a_malformed_noise_key_in_a_checkpoint_is_a_checkpoint_error(mnist_dir):
    from tiny_federation import tiny_config

    from fedgen.experiment import build_experiment

    fed = build_experiment(tiny_config(mnist_dir)).federation
    state = fed.state_dict()
    state["noise_key"] = "not hex"
    with pytest.raises(CheckpointError, match="noise key"):
        fed.load_state_dict(state)


def test_flipped_byte_is_detected(tmp_path):
    path = save_checkpoint(checkpoint_path(tmp_path, 0), payload())
    raw = bytearray(path.read_bytes())
    raw[len(raw) // 2] ^= 0xFF
    path.write_bytes(bytes(raw))
    with pytest.raises(CheckpointError, match=r"corrupted.*delete it"):
        load_checkpoint(path)


def test_truncated_file_is_detected(tmp_path):
    path = save_checkpoint(checkpoint_path(tmp_path, 0), payload())
    path.write_bytes(path.read_bytes()[:100])
    with pytest.raises(CheckpointError):
        load_checkpoint(path)


def test_foreign_file_is_rejected(tmp_path):
    path = tmp_path / "round_0001.ckpt"
    torch.save(payload(), path)  # a plain torch file, not ours
    with pytest.raises(CheckpointError, match="not a fedgen checkpoint"):
        load_checkpoint(path)


def test_prune_keeps_the_newest(tmp_path):
    for r in range(5):
        save_checkpoint(checkpoint_path(tmp_path, r), payload())
    prune_checkpoints(tmp_path, keep=2)
    assert [r for r, _ in list_checkpoints(tmp_path)] == [3, 4]
