"""A file written atomically holds the old bytes or the new, never a part of either."""

from __future__ import annotations

import pytest

from fedgen.files import write_atomic, write_text_atomic


def test_the_new_text_replaces_the_old_readable_by_its_owner_only(tmp_path):
    # Prepare: an existing file others may read
    path = tmp_path / "config.yaml"
    path.write_text("seed: 0\n")
    path.chmod(0o644)
    # Execute
    write_text_atomic(path, "seed: 1\n")
    # Assert
    assert path.read_text() == "seed: 1\n"
    assert path.stat().st_mode & 0o077 == 0


def test_a_text_that_cannot_be_encoded_leaves_the_old_file_whole(tmp_path):
    # Prepare: a lone surrogate cannot be encoded
    path = tmp_path / "config.yaml"
    path.write_text("seed: 0\n")
    # Execute
    with pytest.raises(UnicodeEncodeError):
        write_text_atomic(path, "seed: 1\n" * 10_000 + "\ud800")
    # Assert
    assert path.read_text() == "seed: 0\n"


def test_a_write_that_fails_once_begun_leaves_the_old_file_and_no_partial(tmp_path):
    # Prepare: a payload the open file refuses, after the temporary file was made
    path = tmp_path / "key.json"
    path.write_bytes(b"old")
    # Execute
    with pytest.raises(TypeError):
        write_atomic(path, "not bytes")  # type: ignore[arg-type]
    # Assert
    assert path.read_bytes() == b"old"
    assert [p.name for p in tmp_path.iterdir()] == ["key.json"]  # nothing left beside it
