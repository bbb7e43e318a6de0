"""The Batch API's JSONL files: request files written under its limits, output lines read back.

A request line is ``{"custom_id", "method", "url", "body"}`` with ``custom_id`` the request's cache
key; output and error files hold one line per request, in any order, with the response (status
and chat-completion body) or the error. The same formats are read and written by ``vllm
run-batch``, which `mathse.api.batch_api` uses for a local teacher.
"""

from __future__ import annotations

import json
import sys
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from mathse.api.messages import ChatResult
from mathse.api.replies import RETRYABLE_4XX, ReplyFailure, parse_completion

__all__ = ["ENDPOINT", "BatchOutcome", "parse_line", "write_request_files"]

ENDPOINT = "/v1/chat/completions"


@dataclass
class BatchOutcome:
    """One line of an output or error file: an answer, or why there is none."""

    custom_id: str
    result: ChatResult


def write_request_files(
    folder: Path,
    items: Iterable[tuple[str, dict[str, Any]]],
    max_requests: int = sys.maxsize,
    max_bytes: int = sys.maxsize,
    prefix: str = "requests",
) -> Iterator[tuple[Path, int]]:
    """Stream (custom_id, body) pairs into Batch API JSONL files, each under the limits.

    Yields (path, number of requests) as each file is finished, before the next one is written,
    so one file's worth of requests is the most ever held (and only on disk). Next to each file,
    `<name>.ids` lists its custom_ids: a resumed run reads it to know what a batch holds.
    """
    folder.mkdir(parents=True, exist_ok=True)
    number = count = size = 0
    handle = ids = None
    path = folder / f"{prefix}-0.jsonl"
    try:
        for custom_id, body in items:
            line = json.dumps(
                {"custom_id": custom_id, "method": "POST", "url": ENDPOINT, "body": body}, ensure_ascii=False
            ).encode("utf-8") + b"\n"
            if handle is not None and (count >= max_requests or size + len(line) > max_bytes):
                handle.close()
                ids.close()  # type: ignore[union-attr]
                handle = ids = None
                yield path, count
                number += 1
            if handle is None:
                path = folder / f"{prefix}-{number}.jsonl"
                handle, ids = path.open("wb"), path.with_suffix(".ids").open("w", encoding="utf-8")
                count = size = 0
            handle.write(line)
            ids.write(custom_id + "\n")  # type: ignore[union-attr]
            count += 1
            size += len(line)
        if handle is not None:
            handle.close()
            ids.close()  # type: ignore[union-attr]
            handle = ids = None
            yield path, count
    finally:
        for open_file in (handle, ids):
            if open_file is not None:
                open_file.close()


def _retryable_status(status: int) -> bool:
    return status in RETRYABLE_4XX or status >= 500


def parse_line(raw: str | bytes) -> BatchOutcome | None:
    """An output/error file line -> its outcome; None for a blank or unreadable line."""
    try:
        line = json.loads(raw)
        custom_id = str(line["custom_id"])
    except (ValueError, KeyError, TypeError):
        return None
    response = line.get("response") or {}
    error = line.get("error")
    status = int(response.get("status_code") or 0) if isinstance(response, dict) else 0
    if status == 200:
        try:
            texts, finish, p_tok, c_tok, _ = parse_completion(json.dumps(response.get("body")).encode("utf-8"))
        except ReplyFailure as err:
            return BatchOutcome(custom_id, ChatResult(key="", error=err.reason, retryable=err.retry, batch=True))
        result = ChatResult(key="", text=texts[0], texts=texts, finish_reason=finish, prompt_tokens=p_tok,
                            completion_tokens=c_tok, batch=True)
        return BatchOutcome(custom_id, result)
    body = response.get("body") if isinstance(response, dict) else None
    detail = error if isinstance(error, dict) else (body or {}).get("error") if isinstance(body, dict) else None
    message = str((detail or {}).get("message") or (detail or {}).get("code") or "no detail")[:300]
    if status:
        reason, retry = f"batch line HTTP {status}: {message}", _retryable_status(status)
    else:  # no response at all (batch_expired, batch_cancelled, ...): another batch may answer it
        reason, retry = f"batch line error: {message}", True
    return BatchOutcome(custom_id, ChatResult(key="", error=reason, retryable=retry, batch=True))
