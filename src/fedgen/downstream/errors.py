"""The error a downstream recipe raises when it cannot use its generator."""

from __future__ import annotations

from fedgen.errors import ConfigError


class DownstreamError(ConfigError):
    """The downstream section, or the generator run it names, cannot be used; the message
    says what to do."""
