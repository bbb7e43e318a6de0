"""What an OpenAI-protocol server's answer means: a completion (texts, tokens, log-probabilities),
or a failure that another try may fix (429 with its Retry-After, 5xx, a malformed body) or not
(a refusal, a 4xx). Shared by the live client and the Batch API's output lines.
"""

from __future__ import annotations

import email.utils
import json
import time
from typing import Any

import openai

__all__ = ["RETRYABLE_4XX", "ReplyFailure", "error_message", "parse_completion", "parse_retry_after"]

# Besides 429 and 5xx: request timeout and conflict are transient too (OpenAI's SDK retries them).
RETRYABLE_4XX = {408, 409, 429}


class ReplyFailure(Exception):
    """An attempt that did not produce an answer; `retry` says whether another try may help."""

    def __init__(
        self, reason: str, retry: bool, retry_after: float | None = None, status: int | None = None
    ) -> None:
        super().__init__(reason)
        self.reason = reason
        self.retry = retry
        self.retry_after = retry_after
        self.status = status


def parse_retry_after(headers: Any) -> float | None:
    """Seconds to wait from Retry-After (seconds or an HTTP date) or retry-after-ms; None if absent."""
    if headers is None:
        return None
    value = headers.get("retry-after-ms")
    if value:
        try:
            return max(0.0, float(value) / 1000.0)
        except ValueError:
            pass
    value = headers.get("retry-after")
    if not value:
        return None
    try:
        return max(0.0, float(value))
    except ValueError:
        pass
    try:
        when = email.utils.parsedate_to_datetime(value)
    except (TypeError, ValueError):
        return None
    return max(0.0, when.timestamp() - time.time())


def error_message(err: openai.APIStatusError) -> str:
    body = err.body
    if isinstance(body, dict):
        inner = body.get("error", body)
        if isinstance(inner, dict) and inner.get("message"):
            return str(inner["message"])[:300]
    return str(err.message)[:300]


def parse_completion(content: bytes) -> tuple[list[str], str | None, int, int, list[dict[str, Any]] | None]:
    """texts, finish_reason, prompt_tokens, completion_tokens, first choice's token logprobs."""
    try:
        data = json.loads(content)
        choices = data["choices"]
        if not isinstance(choices, list) or not choices:
            raise ValueError("no choices")
        messages = [c["message"] for c in choices]
    except (ValueError, KeyError, TypeError) as err:
        raise ReplyFailure("malformed response", retry=True) from err
    texts = [m.get("content") if isinstance(m, dict) else None for m in messages]
    finish = choices[0].get("finish_reason") if isinstance(choices[0], dict) else None
    if not all(isinstance(t, str) for t in texts):
        # A refusal or content filter: deterministic, so paying for retries would not help.
        refusal = messages[0].get("refusal") if isinstance(messages[0], dict) else None
        detail = f", refusal: {str(refusal)[:200]}" if refusal else ""
        raise ReplyFailure(f"no content (finish_reason={finish}{detail})", retry=False)
    usage = data.get("usage") or {}
    logprobs = choices[0].get("logprobs") if isinstance(choices[0], dict) else None
    tokens = logprobs.get("content") if isinstance(logprobs, dict) else None
    return (
        texts,
        finish,
        int(usage.get("prompt_tokens") or 0),
        int(usage.get("completion_tokens") or 0),
        tokens if isinstance(tokens, list) else None,
    )
