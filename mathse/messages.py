"""What goes to an OpenAI-compatible chat endpoint and what comes back: messages (images as data
URLs, encoded once), `ChatRequest` and `ChatResult`. `mathse.client` sends them."""

from __future__ import annotations

import base64
import functools
import hashlib
import mimetypes
import os
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

__all__ = ["ChatRequest", "ChatResult", "DataURL", "image_data_url", "system_message", "user_message"]


# -- messages --------------------------------------------------------------------------------


class DataURL(str):
    """A data URL that carries the sha256 of its text, so cache keys never re-hash the image."""

    sha256: str

    def __new__(cls, text: str) -> DataURL:
        url = super().__new__(cls, text)
        url.sha256 = hashlib.sha256(text.encode("ascii")).hexdigest()
        return url


@functools.lru_cache(maxsize=64)
def _encode_file(path: str, mtime_ns: int, size: int) -> DataURL:
    # mtime/size are part of the cache key so an edited image is re-read; the same image is often
    # sent several times in a row (k samples per problem), so it is read and encoded once. Small
    # maxsize: each entry holds a whole base64 image.
    mime = mimetypes.guess_type(path)[0] or "image/png"
    data = base64.b64encode(Path(path).read_bytes()).decode("ascii")
    return DataURL(f"data:{mime};base64,{data}")


def image_data_url(image: str | Path) -> str:
    """An http(s)/data URL as is; a local file as a base64 data URL (mime type from its name)."""
    text = str(image)
    if isinstance(image, str) and text.startswith(("http://", "https://", "data:")):
        return text
    stat = os.stat(text)
    return _encode_file(os.path.abspath(text), stat.st_mtime_ns, stat.st_size)


def user_message(text: str, images: Sequence[str | Path] = (), detail: str = "auto") -> dict[str, Any]:
    """A user message; images go before the text (the order Qwen2-VL was trained on)."""
    if not images:
        return {"role": "user", "content": text}
    parts: list[dict[str, Any]] = []
    for image in images:
        image_url: dict[str, Any] = {"url": image_data_url(image)}
        if detail != "auto":  # "auto" is the API default; omitting it keeps local servers happy
            image_url["detail"] = detail
        parts.append({"type": "image_url", "image_url": image_url})
    parts.append({"type": "text", "text": text})
    return {"role": "user", "content": parts}


def system_message(text: str) -> dict[str, Any]:
    return {"role": "system", "content": text}


# -- requests and results --------------------------------------------------------------------


@dataclass
class ChatRequest:
    """One chat completion to make. `key` is the caller's id, unique within a batch."""

    key: str
    messages: list[dict[str, Any]]
    temperature: float | None = None  # None: the ApiConfig's value
    max_tokens: int | None = None
    n: int | None = None
    # Other body parameters (seed, stop, response_format, ...): sent, and part of the cache key.
    extra: dict[str, Any] | None = None
    # Part of the cache key only, never sent: k distinct samples of one prompt at temperature > 0
    # need k different salts, or they would share one cache entry (and one answer).
    cache_salt: str | None = None


@dataclass
class ChatResult:
    """The outcome of one `ChatRequest`: `text` when answered, `error` (the reason) when not."""

    key: str
    text: str | None = None
    error: str | None = None
    prompt_tokens: int = 0
    completion_tokens: int = 0
    cached: bool = False
    attempts: int = 0  # HTTP calls made for this request (0 when served from the cache)
    latency_s: float = 0.0
    texts: list[str] = field(default_factory=list)  # all choices when n > 1; texts[0] == text
    finish_reason: str | None = None
    # A failure another try may fix (429, 5xx, timeout: the retries ran out), as opposed to one a
    # rerun would only pay for again (HTTP 400, a refusal). Callers leave retryable work unmarked.
    retryable: bool = False
    batch: bool = False  # answered through the Batch API (billed at the batch price)

    @property
    def ok(self) -> bool:
        return self.error is None and self.text is not None
