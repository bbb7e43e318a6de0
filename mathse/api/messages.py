"""What goes to an OpenAI-compatible chat endpoint and what comes back: messages, `ChatRequest` and
`ChatResult`. `mathse.api.client` sends them.

A local image in a message is an `ImageRef` (path, size, mtime), not its base64 text: a request
holds a few hundred bytes however large its images, so a batch of 100K requests can be built
before any is sent. The data URL is made when the request goes out (`wire_messages`), through an
encoder cache bounded by bytes; the cache key uses the sha256 of that data URL, computed by
streaming the file once and remembered in a small digest cache, so keys are the same as when
requests carried the encoded image itself.
"""

from __future__ import annotations

import base64
import hashlib
import mimetypes
import os
import threading
from collections import OrderedDict
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol

__all__ = [
    "ChatRequest",
    "ChatResult",
    "ImagePrep",
    "ImageRef",
    "encoder_cache_bytes",
    "image_data_url",
    "system_message",
    "user_message",
    "wire_messages",
]

# The encoder cache: the same image often goes out several times in a row (k samples per problem,
# a re-ask), so its data URL is kept, up to this many bytes in all (least recently used out).
ENCODED_CACHE_BYTES = 32 * 2**20
# sha256 per (path, mtime, size), ~450 bytes an entry: enough for the paths of the problems in
# flight (asked about the same image one after another), small next to 100K problems.
DIGEST_CACHE_ENTRIES = 4096
_READ_CHUNK = 3 * 2**18  # a multiple of 3: base64 of the chunks concatenates to base64 of the file
_HASH_VIA_URL_BYTES = 2 * 2**20  # larger images are hashed in chunks, never whole in memory


class _LRU:
    """A thread-safe LRU map bounded by the summed `size` of its values (bytes, or 1 per entry)."""

    def __init__(self, budget: int) -> None:
        self.budget = budget
        self.used = 0
        self._items: OrderedDict[Any, tuple[Any, int]] = OrderedDict()
        self._lock = threading.Lock()

    def get(self, key: Any) -> Any:
        with self._lock:
            hit = self._items.get(key)
            if hit is None:
                return None
            self._items.move_to_end(key)
            return hit[0]

    def put(self, key: Any, value: Any, size: int) -> None:
        if size > self.budget:
            return  # one image larger than the whole cache is encoded per send, never kept
        with self._lock:
            old = self._items.pop(key, None)
            if old is not None:
                self.used -= old[1]
            self._items[key] = (value, size)
            self.used += size
            while self.used > self.budget:
                _, (_, dropped) = self._items.popitem(last=False)
                self.used -= dropped

    def clear(self) -> None:
        with self._lock:
            self._items.clear()
            self.used = 0


_ENCODED = _LRU(ENCODED_CACHE_BYTES)
_DIGESTS = _LRU(DIGEST_CACHE_ENTRIES)


def encoder_cache_bytes() -> int:
    """Bytes of data URLs the encoder cache holds now (never above ENCODED_CACHE_BYTES)."""
    return _ENCODED.used


class ImagePrep(Protocol):
    """How a served model wants its images: the image its training saw, not the file (a model served
    by the pipeline gets each image resized as LLaMA-Factory resized it; see model/served_images.py)."""

    key: str  # names the preparation (part of the image's identity, so of the cache keys)

    def encode(self, path: str) -> tuple[str, bytes] | None:
        """(mime type, bytes) to send instead of the file; None: the file as it is."""
        ...


class ImageRef:
    """A local image file, sent as a base64 data URL made only when its request goes out.

    Holds the file's identity (absolute path, mtime, size): an image edited after the request was
    built is caught (`ValueError` at send time) rather than sent silently under the old cache key.
    """

    __slots__ = ("mime", "mtime_ns", "path", "prep", "size")

    def __init__(self, path: str | Path, prep: ImagePrep | None = None) -> None:
        self.path = os.path.abspath(path)
        stat = os.stat(self.path)  # a missing file fails here, when the request is built
        self.mtime_ns, self.size = stat.st_mtime_ns, stat.st_size
        self.mime = mimetypes.guess_type(self.path)[0] or "image/png"
        self.prep = prep

    @property
    def _id(self) -> tuple[str, int, int, str]:
        return (self.path, self.mtime_ns, self.size, "" if self.prep is None else self.prep.key)

    def __eq__(self, other: object) -> bool:
        return isinstance(other, ImageRef) and self._id == other._id

    def __hash__(self) -> int:
        return hash(self._id)

    def __repr__(self) -> str:
        return f"ImageRef({self.path!r})"

    def _check(self) -> None:
        stat = os.stat(self.path)
        if (stat.st_mtime_ns, stat.st_size) != (self.mtime_ns, self.size):
            raise ValueError(f"image changed after its request was built: {self.path}")

    @property
    def sha256(self) -> str:
        """sha256 of the data URL text, streamed from the file (never the whole base64 in memory)."""
        digest = _DIGESTS.get(self._id)
        if digest is None:
            if self.size <= _HASH_VIA_URL_BYTES or self.prep is not None:
                # A request's key is made just before it is sent: encode the image once, hash that
                # text and leave it in the encoder cache for the send (one file read, not two).
                digest = hashlib.sha256(self.data_url().encode("ascii")).hexdigest()
            else:
                self._check()
                h = hashlib.sha256(f"data:{self.mime};base64,".encode("ascii"))
                with open(self.path, "rb") as handle:
                    while chunk := handle.read(_READ_CHUNK):
                        h.update(base64.b64encode(chunk))
                digest = h.hexdigest()
            _DIGESTS.put(self._id, digest, 1)
        return digest

    def data_url(self) -> str:
        """The base64 data URL (from the bounded encoder cache when it was sent recently)."""
        url = _ENCODED.get(self._id)
        if url is None:
            self._check()
            prepared = None if self.prep is None else self.prep.encode(self.path)
            mime, raw = prepared if prepared is not None else (self.mime, Path(self.path).read_bytes())
            url = f"data:{mime};base64,{base64.b64encode(raw).decode('ascii')}"
            _ENCODED.put(self._id, url, len(url))
        return url


def image_data_url(image: str | Path) -> str:
    """An http(s)/data URL as is; a local file as a base64 data URL (mime type from its name)."""
    text = str(image)
    if isinstance(image, str) and text.startswith(("http://", "https://", "data:")):
        return text
    return ImageRef(text).data_url()


def _image_ref(image: str | Path, prep: ImagePrep | None = None) -> str | ImageRef:
    text = str(image)
    if isinstance(image, str) and text.startswith(("http://", "https://", "data:")):
        return text
    return ImageRef(text, prep)


def user_message(
    text: str, images: Sequence[str | Path] = (), detail: str = "auto", prep: ImagePrep | None = None
) -> dict[str, Any]:
    """A user message; images go before the text (the order Qwen2-VL was trained on).

    Local images are `ImageRef`s: encoded when the request is sent (`wire_messages`), through
    `prep` when given (a served model's own image preparation)."""
    if not images:
        return {"role": "user", "content": text}
    parts: list[dict[str, Any]] = []
    for image in images:
        image_url: dict[str, Any] = {"url": _image_ref(image, prep)}
        if detail != "auto":  # "auto" is the API default; omitting it keeps local servers happy
            image_url["detail"] = detail
        parts.append({"type": "image_url", "image_url": image_url})
    parts.append({"type": "text", "text": text})
    return {"role": "user", "content": parts}


def system_message(text: str) -> dict[str, Any]:
    return {"role": "system", "content": text}


def wire_messages(messages: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """The messages as sent: every `ImageRef` replaced by its data URL (plain JSON, a new list).

    Messages without an `ImageRef` are returned as they are (not copied)."""
    out: list[dict[str, Any]] = []
    for message in messages:
        content = message.get("content") if isinstance(message, dict) else None
        if isinstance(content, list) and any(_has_ref(part) for part in content):
            parts = []
            for part in content:
                if _has_ref(part):
                    image_url = part["image_url"]
                    part = {**part, "image_url": {**image_url, "url": image_url["url"].data_url()}}
                parts.append(part)
            message = {**message, "content": parts}
        out.append(message)
    return out


def _has_ref(part: Any) -> bool:
    image_url = part.get("image_url") if isinstance(part, dict) else None
    return isinstance(image_url, dict) and isinstance(image_url.get("url"), ImageRef)


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
    status: int | None = None  # the HTTP status of the failed attempt, when the server answered one
    # Token log-probabilities of the first choice (`choices[0].logprobs.content`), when asked for
    # (request extra {"logprobs": true}) and the server returns them; None otherwise.
    logprobs: list[dict[str, Any]] | None = None
    batch: bool = False  # answered through the Batch API (billed at the batch price)

    @property
    def ok(self) -> bool:
        return self.error is None and self.text is not None
