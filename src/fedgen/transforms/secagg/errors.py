"""Errors of secure aggregation; each message says what to do."""

from __future__ import annotations

from fedgen.errors import ConfigError, FedgenError, RoundFailedError


class SecAggError(FedgenError):
    """Base class of every error the secure-aggregation protocol raises on purpose."""


class SecAggConfigError(SecAggError, ConfigError):
    """A secure-aggregation configuration is unsound for the round it is used in."""


class SecAggRoundFailedError(SecAggError, RoundFailedError):
    """Too few clients survived for the masks to be removed; the round has no sum.

    A ``RoundFailedError``, so the round loop keeps the previous global state and goes on.
    """


class ShareTamperedError(SecAggError, RoundFailedError):
    """A share, its ciphertext or its routing was altered, swapped or replayed.

    The round is aborted: a sum built on a forged share could be wrong or could
    reveal an individual update.
    """


class MalformedMessageError(SecAggError, RoundFailedError):
    """A protocol message has a field of the wrong type, length or range.

    What a decoder of the wire format would refuse. The server treats a client whose
    key advertisement, share set or masked input it cannot use as a dropout (the
    protocol's U1/U2/U3); anywhere else the round is aborted.
    """


class SecAggSecurityWarning(UserWarning):
    """A configuration that works but gives weaker guarantees than the default."""
