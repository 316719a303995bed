"""A hold on a run folder or run id refuses a second writer at once, names what to do, and
ends with its holder however that exits (a real second process holds the lock)."""

from __future__ import annotations

import pytest
from lock_holder import hold_elsewhere, is_held

from fedgen.engine.run_lock import Hold, RunHeldError
from fedgen.errors import ConfigError


@pytest.mark.parametrize("kind", ["folder", "file"])
def test_a_second_process_is_refused_until_the_holder_is_killed(tmp_path, kind):
    # Prepare: a run folder (or a run id's lock file) held by another process.
    path = tmp_path / "run" if kind == "folder" else tmp_path / "abc.lock"
    if kind == "folder":
        path.mkdir()
    other = hold_elsewhere(path)
    hold = Hold(path, f"the thing {path.name}", "do this instead")
    try:
        # Execute / Assert: refused at once (no waiting), with the advice; a ConfigError,
        # so the CLI reports it as a usage error without a traceback.
        with pytest.raises(RunHeldError, match="being written by another process") as refused:
            hold.acquire()
        assert isinstance(refused.value, ConfigError)
        assert f"the thing {path.name}" in str(refused.value)
        assert "do this instead" in str(refused.value)
        assert not hold.held
    finally:
        other.kill()  # SIGKILL: no clean-up runs, the kernel still drops the lock
        other.wait()
    with hold:
        assert hold.held
    assert not hold.held


def test_holds_nest_in_one_process_and_the_outermost_keeps_the_lock(tmp_path):
    # The CLI, a downstream run and the run inside it each hold the folder.
    outer = Hold(tmp_path, "the folder", "wait")
    with outer:
        with Hold(tmp_path, "the folder", "wait") as inner:
            assert inner.held
        # The inner one is released, the folder is still held against other processes.
        assert is_held(tmp_path)
    # Released: another process takes it now.
    assert not is_held(tmp_path)


def test_a_folder_that_cannot_be_opened_is_a_clear_error(tmp_path):
    with pytest.raises(ConfigError, match=r"cannot open .* may read and write it"):
        Hold(tmp_path / "missing" / "x.lock", "the run id", "wait").acquire()
