"""The deployment's private keys are readable by their owner only, also when rewritten."""

from __future__ import annotations

from fedgen.deploy.certs import make_ca


def test_a_rewritten_ca_key_does_not_keep_a_looser_mode(tmp_path):
    # Prepare: a key file left readable by others (an earlier copy, a umask)
    (tmp_path / "ca.key").write_bytes(b"old")
    (tmp_path / "ca.key").chmod(0o644)
    # Execute
    make_ca(tmp_path)
    # Assert: a new key, owner-only
    key = tmp_path / "ca.key"
    assert key.read_bytes() != b"old" and b"PRIVATE KEY" in key.read_bytes()
    assert key.stat().st_mode & 0o077 == 0
