"""A deployed client's private state by round: the version a job starts from, and what
outlives a SuperNode restart (real Flower Contexts, real files)."""

from __future__ import annotations

import pytest
import torch

from fedgen.deploy.private_store import KEEP, PrivateStore

flwr_app = pytest.importorskip("flwr.app")


def _context(node_config: dict[str, object]):
    return flwr_app.Context(
        run_id=1, node_id=2, node_config=node_config, state=flwr_app.RecordDict(), run_config={}
    )


def _state(r: int) -> dict[str, torch.Tensor]:
    return {"head.weight": torch.full((2, 3), float(r))}


@pytest.mark.parametrize("on_disk", [True, False])
def test_a_job_starts_from_the_newest_version_before_its_round(tmp_path, on_disk):
    config = {"state-dir": str(tmp_path)} if on_disk else {}
    store = PrivateStore(_context(config), "ab" * 16, 3)
    for r in (0, 2, 5):
        store.save(r, _state(r))
    assert store.load(before_round=0) is None
    loaded = store.load(before_round=5)  # a resume from round 4 never sees round 5's state
    assert loaded is not None and torch.equal(loaded["head.weight"], _state(2)["head.weight"])
    loaded = store.load(before_round=9)
    assert loaded is not None and torch.equal(loaded["head.weight"], _state(5)["head.weight"])


def test_versions_outlive_the_supernode_in_its_state_dir_and_are_capped(tmp_path):
    first = PrivateStore(_context({"state-dir": str(tmp_path)}), "cd" * 16, 0)
    for r in range(KEEP + 3):
        first.save(r, _state(r))
    # A restarted SuperNode has a fresh Context; the folder is what it keeps.
    again = PrivateStore(_context({"state-dir": str(tmp_path)}), "cd" * 16, 0)
    loaded = again.load(before_round=KEEP + 3)
    assert loaded is not None and torch.equal(
        loaded["head.weight"], _state(KEEP + 2)["head.weight"]
    )
    assert len(list(again.folder.iterdir())) == KEEP  # type: ignore[union-attr]
    # Older than the oldest kept: the client starts from its initial private state.
    assert again.load(before_round=2) is None
    # Another run, or another client, never reads these.
    assert PrivateStore(_context({"state-dir": str(tmp_path)}), "ef" * 16, 0).load(99) is None
    assert PrivateStore(_context({"state-dir": str(tmp_path)}), "cd" * 16, 1).load(99) is None


def test_an_unreadable_version_starts_afresh_with_a_warning(tmp_path, caplog):
    store = PrivateStore(_context({"state-dir": str(tmp_path)}), "ab" * 16, 1)
    store.save(4, _state(4))
    (store.folder / "round-4.wire").write_bytes(b"torn")  # type: ignore[operator]
    assert store.load(before_round=6) is None
    assert "unreadable" in caplog.text


@pytest.mark.parametrize("on_disk", [True, False])
def test_a_resume_from_further_back_keeps_the_round_it_trains_again(tmp_path, on_disk):
    # Prepare: rounds 12-19 kept, then the server resumes from round 10's checkpoint
    config = {"state-dir": str(tmp_path)} if on_disk else {}
    store = PrivateStore(_context(config), "ab" * 16, 3)
    for r in range(12, 12 + KEEP):
        store.save(r, _state(r))
    # Execute
    store.save(11, _state(11))
    # Assert: round 11's version is the newest (the later ones were another timeline's)
    loaded = store.load(before_round=12 + KEEP)
    assert loaded is not None and torch.equal(loaded["head.weight"], _state(11)["head.weight"])
