"""A file written atomically holds the old text or the new, never a part of either."""

from __future__ import annotations

import pytest

from fedgen.files import write_text_atomic


def test_the_new_text_replaces_the_old(tmp_path):
    # Prepare
    path = tmp_path / "config.yaml"
    path.write_text("seed: 0\n")
    # Execute
    write_text_atomic(path, "seed: 1\n")
    # Assert
    assert path.read_text() == "seed: 1\n"


def test_a_write_that_fails_midway_leaves_the_old_file_whole(tmp_path):
    # Prepare: a lone surrogate cannot be encoded, so the write fails once the file is open
    path = tmp_path / "config.yaml"
    path.write_text("seed: 0\n")
    # Execute
    with pytest.raises(UnicodeEncodeError):
        write_text_atomic(path, "seed: 1\n" * 10_000 + "\ud800")
    # Assert
    assert path.read_text() == "seed: 0\n"
    assert [p.name for p in tmp_path.iterdir()] == ["config.yaml"]  # nothing left beside it
