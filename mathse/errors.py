"""Errors a user can act on; the CLI prints them as one line instead of a traceback."""

from __future__ import annotations

from mathse.config import ConfigError
from mathse.llamafactory_bridge import TrainingError
from mathse.records import DataError
from mathse.storage import CorruptFileError


class StageError(Exception):
    """A stage cannot run now (an earlier stage is missing, shards are incomplete, ...)."""


USER_ERRORS: tuple[type[Exception], ...] = (DataError, StageError, CorruptFileError, FileNotFoundError)

__all__ = ["USER_ERRORS", "ConfigError", "DataError", "StageError", "TrainingError"]
