"""Errors a user can act on; the CLI prints them as one line instead of a traceback.

Defined here, below every other module of MathSE, so any module can raise them without importing
the module that owns the feature.
"""

from __future__ import annotations


class ConfigError(Exception):
    """A config problem; `lines` holds one human-readable line per problem."""

    def __init__(self, lines: list[str]) -> None:
        self.lines = lines
        super().__init__("\n".join(lines))


class DataError(Exception):
    """Bad input data; the message is one line naming the file and line or the record id."""


class CorruptFileError(ValueError):
    """A file MathSE wrote has a damaged line that is not the torn tail of a kill."""


class TrainingError(Exception):
    """`llamafactory-cli train` failed; the message ends with the log's last lines."""


class StageError(Exception):
    """A stage cannot run now (an earlier stage is missing, shards are incomplete, ...)."""


USER_ERRORS: tuple[type[Exception], ...] = (DataError, StageError, CorruptFileError, FileNotFoundError)

__all__ = ["USER_ERRORS", "ConfigError", "CorruptFileError", "DataError", "StageError", "TrainingError"]
