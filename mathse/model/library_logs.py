"""LLaMA-Factory's and transformers' log lines for an in-process model go to the stage's log file."""

from __future__ import annotations

import contextlib
import logging
from collections.abc import Iterator
from pathlib import Path
from typing import Any


@contextlib.contextmanager
def library_logs_to(log_path: Path) -> Iterator[None]:
    """LLaMA-Factory's and transformers' log lines go to `log_path` (appended) for the block.

    For a ChatModel loaded in this process: its chatter (configs, "loading weights", generation
    config dumps) belongs in the stage's log, not on the console. Both libraries log through one
    stream handler on their root logger (transformers' is re-added by LLaMA-Factory whenever it
    parses arguments), so pointing those handlers at the file catches every line; they point back
    to the console when the block ends.
    """
    import transformers.utils.logging as hf_logging
    from llamafactory.extras import logging as lf_logging

    lf_logging.get_logger()  # both handlers exist from here on
    hf_logging.get_logger()
    handlers = {
        h
        for name in ("transformers", "llamafactory")
        for h in logging.getLogger(name).handlers
        if type(h) is logging.StreamHandler
    }
    default = getattr(hf_logging, "_default_handler", None)  # re-added by enable_default_handler()
    if isinstance(default, logging.StreamHandler):
        handlers.add(default)
    # LLaMA-Factory turns transformers' verbosity up to INFO when it parses arguments, for good:
    # restored afterwards, or every later tokenizer load in this process would talk on the console.
    verbosity, bars = hf_logging.get_verbosity(), hf_logging.is_progress_bar_enabled()
    log_path.parent.mkdir(parents=True, exist_ok=True)
    with log_path.open("a", encoding="utf-8") as log:
        previous = {h: _swap_stream(h, log) for h in handlers}
        hf_logging.disable_progress_bar()  # "Loading weights" bars: tqdm on the console, not logging
        try:
            yield
        finally:
            for handler, stream in previous.items():
                _swap_stream(handler, stream)
            hf_logging.set_verbosity(verbosity)
            if bars:
                hf_logging.enable_progress_bar()


def _swap_stream(handler: logging.StreamHandler, stream: Any) -> Any:
    """Point `handler` at `stream`; returns the old one. Unlike setStream it never fails on an old
    stream that was closed meanwhile (e.g. a console captured and released by a test runner)."""
    with handler.lock or contextlib.nullcontext():
        old = handler.stream
        with contextlib.suppress(ValueError, OSError, AttributeError):
            old.flush()
        handler.stream = stream
    return old
