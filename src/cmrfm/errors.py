"""Error types that the CLI turns into one clear line (file and reason), never a traceback."""

from __future__ import annotations

from os import PathLike


class CmrfmError(Exception):
    """Base class for every error cmrfm reports to a user."""


class InputError(CmrfmError):
    """A file or folder a user gave us cannot be used.

    Args:
        path: The offending file or folder.
        reason: What is wrong with it, in words a user can act on.
    """

    def __init__(self, path: str | PathLike[str] | None, reason: str) -> None:
        self.path = None if path is None else str(path)
        self.reason = reason
        super().__init__(f"{self.path}: {reason}" if self.path else reason)


class ConfigError(CmrfmError):
    """A configuration key or value is invalid."""
