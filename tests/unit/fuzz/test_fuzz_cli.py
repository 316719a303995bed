"""`fedgen run` with a garbage recipe or override: a one-line error naming it, no traceback.

Run in this process (`fedgen_here`): what is checked is the command's answer, not its
process, and each `fedgen` process costs seconds of imports.
"""

from __future__ import annotations

from pathlib import Path

import pytest
from cli_runner import fedgen_here


def assert_clear_failure(proc, *named: str) -> str:
    """Non-zero exit, no traceback, an ``error:`` line on stderr naming each of ``named``."""
    out = proc.stdout + proc.stderr
    assert proc.returncode != 0, out
    assert "Traceback" not in out, out
    lines = proc.stderr.strip().splitlines()
    assert lines and lines[0].startswith("error:"), out
    for name in named:
        assert name in proc.stderr, out
    return proc.stderr


@pytest.mark.parametrize(
    ("override", "named"),
    [
        ("garbage", "'garbage'"),
        ("federation.rounds=[", "federation.rounds"),
        ("name=" + "[" * 3000, "name"),
    ],
)
def test_run_with_a_garbage_override_says_which(override: str, named: str) -> None:
    stderr = assert_clear_failure(fedgen_here("run", "--set", override, check=False), named)
    assert len(stderr.strip().splitlines()) == 1, stderr


def test_run_with_a_wrong_typed_override_names_the_key() -> None:
    proc = fedgen_here("run", "--set", "federation.rounds=many", check=False)
    assert_clear_failure(proc, "federation.rounds", "many")


@pytest.mark.parametrize(
    "content",
    [b"\x80\x81\xfe binary", b"a: &a [*a, *a]\nb: *a\n"],
)
def test_run_with_a_garbage_recipe_names_the_file(tmp_path: Path, content: bytes) -> None:
    recipe = tmp_path / "garbage.yaml"
    recipe.write_bytes(content)
    proc = fedgen_here("run", str(recipe), "--out", str(tmp_path / "run"), check=False)
    assert_clear_failure(proc)
    assert "garbage.yaml" in proc.stderr or "invalid config" in proc.stderr
    assert not (tmp_path / "run").exists()
