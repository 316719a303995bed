"""Ed25519 keys, hex encodings and the domain separation of signed messages."""

from __future__ import annotations

import stat

import pytest

from fedgen.ledger import (
    LedgerError,
    generate_key,
    private_key_from_hex,
    private_key_hex,
    public_key_from_hex,
    public_key_hex,
    read_private_key,
    sign,
    tree_head_message,
    update_message,
    verify_signature,
    write_private_key,
)

DIGEST = "ab" * 32


def test_public_key_hex_round_trips_and_is_32_raw_bytes():
    key = generate_key()
    text = public_key_hex(key)
    assert len(text) == 64 and text == text.lower()
    assert public_key_hex(public_key_from_hex(text)) == text
    assert public_key_hex(key.public_key()) == text


def test_private_key_hex_round_trips_to_the_same_signer():
    key = generate_key()
    again = private_key_from_hex(private_key_hex(key))
    message = update_message("00ff", 1, 2, DIGEST)
    assert verify_signature(public_key_hex(key), message, sign(again, message))


@pytest.mark.parametrize("bad", ["", "zz" * 32, "ab" * 31, "ab" * 33, "ab " * 21 + "a", 7])
def test_malformed_public_keys_raise_ledger_error(bad):
    with pytest.raises(LedgerError, match="Ed25519 public key"):
        public_key_from_hex(bad)


def test_a_signature_verifies_only_for_its_exact_message_and_key():
    key, other = generate_key(), generate_key()
    message = update_message("run1", 3, 7, DIGEST)
    signature = sign(key, message)
    assert verify_signature(public_key_hex(key), message, signature)
    assert not verify_signature(public_key_hex(other), message, signature)
    assert not verify_signature(public_key_hex(key), message + b" ", signature)
    tampered = ("0" if signature[0] != "0" else "1") + signature[1:]
    assert not verify_signature(public_key_hex(key), message, tampered)
    assert not verify_signature(public_key_hex(key), message, "not hex")
    assert not verify_signature("not a key", message, signature)


def test_an_update_signature_cannot_be_replayed_to_another_run_round_client_or_digest():
    key = generate_key()
    pub = public_key_hex(key)
    signature = sign(key, update_message("run1", 3, 7, DIGEST))
    for replay in [
        update_message("run2", 3, 7, DIGEST),
        update_message("run1", 4, 7, DIGEST),
        update_message("run1", 3, 8, DIGEST),
        update_message("run1", 3, "7", DIGEST),
        update_message("run1", 3, 7, "cd" * 32),
    ]:
        assert not verify_signature(pub, replay, signature)


def test_update_and_tree_head_messages_are_domain_separated():
    update = update_message("run1", 3, 7, DIGEST)
    head = tree_head_message("run1", 3, DIGEST, 7)
    assert update.startswith(b"fedgen-update-v1\n")
    assert head.startswith(b"fedgen-tree-head-v1\n")
    assert update.split(b"\n", 1)[1] != head.split(b"\n", 1)[1]
    assert tree_head_message("run1", 3, DIGEST, 7) != tree_head_message("run2", 3, DIGEST, 7)
    assert tree_head_message("run1", 3, DIGEST, 7) != tree_head_message("run1", 3, DIGEST, None)


def test_private_key_file_is_owner_only_and_never_overwritten(tmp_path):
    key = generate_key()
    path = tmp_path / "server.key"
    write_private_key(path, key)
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    assert public_key_hex(read_private_key(path)) == public_key_hex(key)
    with pytest.raises(LedgerError, match="never overwritten"):
        write_private_key(path, generate_key())
    assert public_key_hex(read_private_key(path)) == public_key_hex(key)
    with pytest.raises(LedgerError, match="cannot read"):
        read_private_key(tmp_path / "missing.key")
