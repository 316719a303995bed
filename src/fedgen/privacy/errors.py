"""Errors of the privacy layer; each message names the setting to change."""

from __future__ import annotations

from fedgen.errors import ConfigError


class PrivacyConfigError(ConfigError):
    """A differential-privacy setting is invalid, unsound, or its budget cannot be met.

    Raised before round 1 with every problem found, one per line, each with its fix.
    """

    def __init__(self, problems: list[str], header: str = "invalid privacy settings") -> None:
        self.problems = list(problems)
        super().__init__(f"{header}:\n  " + "\n  ".join(self.problems))
