"""Errors a user can act on; the CLI prints them as one line instead of a traceback."""

from __future__ import annotations

from mathse.client import FatalEndpointError
from mathse.config import ConfigError
from mathse.llamafactory_bridge import TrainingError
from mathse.records import DataError
from mathse.storage import CorruptFileError


class StageError(Exception):
    """A stage cannot run now (an earlier stage is missing, shards are incomplete, ...)."""


# FatalEndpointError: the API refuses every request (401/403/404, a 400 for all): fix the config.
USER_ERRORS: tuple[type[Exception], ...] = (
    DataError,
    StageError,
    CorruptFileError,
    FileNotFoundError,
    FatalEndpointError,
)

__all__ = ["USER_ERRORS", "ConfigError", "DataError", "FatalEndpointError", "StageError", "TrainingError"]
