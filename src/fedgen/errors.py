"""Errors whose messages say what to do.

Every user-facing check raises a ``FedgenError`` subclass (or ``ValueError``)
with a message that names the problem and the fix; ``assert`` is never used
for input checks.
"""

from __future__ import annotations


class FedgenError(Exception):
    """Base class for every error fedgen raises on purpose."""


class ConfigError(FedgenError, ValueError):
    """A recipe or override is malformed: unknown key, wrong type, bad value."""


class DataMissingError(FedgenError, FileNotFoundError):
    """A data set's files are not where fedgen looked; the message says how to get them."""


class ChecksumError(FedgenError):
    """A data or checkpoint file does not match its recorded sha256."""


class CheckpointError(FedgenError):
    """A checkpoint is corrupted, truncated or belongs to a different experiment."""


class RoundFailedError(FedgenError):
    """Too few clients returned a usable update for the round to be aggregated."""


class ClientUpdateError(FedgenError):
    """A client's update is malformed (wrong shapes, NaN/Inf, absurd norm).

    Raised inside validation and turned into a failure value by the round loop;
    it never ends a run on its own.
    """
