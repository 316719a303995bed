"""The ledger's one error type."""

from __future__ import annotations

from fedgen.errors import FedgenError


class LedgerError(FedgenError):
    """A ledger file is missing, corrupt or not a ledger, or an entry breaks the contract.

    The message names the file or entry and says what to do.
    """
