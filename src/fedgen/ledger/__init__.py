"""A tamper-evident, signed transparency log of a federated run (RFC 6962 / RFC 9162).

The server appends one entry per event of the run (``entries`` lists the kinds and their
bodies), signs a tree head over the Merkle root of the log after each round, and
``verify_run`` later checks the log, its signatures and the checkpoints beside it.

Typical use by the round loop::

    key = generate_key()
    with Ledger.open(run_dir / "ledger.sqlite", create=True) as ledger:
        ledger.append("run_start", {"run_id": run_id, "server_public_key": public_key_hex(key),
                                    "fingerprint": fp, "rounds": 10})
        ...
        ledger.sign_head(round, key)
    report = verify_run(run_dir)
"""

from fedgen.ledger.digest import canonical_json, file_digest, state_digest
from fedgen.ledger.entries import SCHEMA, Entry, TreeHead, leaf_data
from fedgen.ledger.errors import LedgerError
from fedgen.ledger.keys import (
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
from fedgen.ledger.merkle import MerkleTree, root_hash, verify_consistency, verify_inclusion
from fedgen.ledger.show import format_entries
from fedgen.ledger.store import Ledger
from fedgen.ledger.verify import LEDGER_FILE, LedgerReport, verify_run

__all__ = [
    "LEDGER_FILE",
    "SCHEMA",
    "Entry",
    "Ledger",
    "LedgerError",
    "LedgerReport",
    "MerkleTree",
    "TreeHead",
    "canonical_json",
    "file_digest",
    "format_entries",
    "generate_key",
    "leaf_data",
    "private_key_from_hex",
    "private_key_hex",
    "public_key_from_hex",
    "public_key_hex",
    "read_private_key",
    "root_hash",
    "sign",
    "state_digest",
    "tree_head_message",
    "update_message",
    "verify_consistency",
    "verify_inclusion",
    "verify_run",
    "verify_signature",
    "write_private_key",
]
