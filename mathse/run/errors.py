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


class FatalEndpointError(Exception):
    """The endpoint refuses every request (bad key, unknown model, wrong URL): stop, lose nothing.

    Raised by `ChatClient.complete_many` instead of returning a batch of failures that a stage
    would count as dropped items and mark done.
    """

    def __init__(self, stage: str, base_url: str, model: str, status: int, message: str, count: int) -> None:
        self.base_url, self.model, self.status = base_url, model, status
        detail = " ".join(message.split())[:200]
        super().__init__(
            f"{stage}: endpoint {base_url} (model {model}) answered HTTP {status} to {count} requests in a row "
            f"({detail}); no retry fixes that: check its base_url, model and api_key, then rerun the same "
            f"command (nothing was marked done)"
        )


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

__all__ = [
    "USER_ERRORS",
    "ConfigError",
    "CorruptFileError",
    "DataError",
    "FatalEndpointError",
    "StageError",
    "TrainingError",
]
