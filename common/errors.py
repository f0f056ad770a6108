"""Error types that the runners turn into one clear line and a non-zero exit."""

from __future__ import annotations


class SuiteError(Exception):
    """Base class for every error that is the user's input, not a bug.

    Runners catch it, print ``error: <message>`` on stderr and exit with status 2.
    """


class ConfigError(SuiteError, ValueError):
    """A configuration value is missing, of the wrong form, or inconsistent."""

    def __init__(self, key: str, message: str) -> None:
        self.key = key
        self.detail = message
        super().__init__(f"config key '{key}': {message}")


class InputError(SuiteError, ValueError):
    """An input file or array is malformed; the message says what and where."""


class RecordError(SuiteError):
    """A run record is unreadable or incomplete."""
