"""The on-disk answer cache of chat requests: its key recipe and its one-file-per-answer entries.

The cache is one small JSON file per answered request, ``cache_dir/ab/cd/<sha256>.json``, written
to a temp file and renamed into place: safe when killed at any instant, and safe with several
processes or nodes on one shared filesystem (no locks, no database; the worst case is two writers
storing the same answer). The key is a sha256 of the canonical JSON of everything that decides the
answer (model, messages with their images' sha256, sampling parameters) and nothing that does not
(base_url, api_key), so a result cached against one server is reused against a mirror of it.
Both the live client (`mathse.api.client`) and the Batch API (`mathse.api.batch_api`) read and
fill it, so an answer is paid for once whichever path brings it.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import logging
import os
import time
import uuid
from pathlib import Path
from typing import Any

from mathse.api.messages import ChatResult, ImageRef

__all__ = ["CACHE_VERSION", "AnswerCache", "cache_key", "cached_result"]

log = logging.getLogger(__name__)

CACHE_VERSION = 1  # bump when the cached entry format or key recipe changes


def _canonical(obj: Any) -> bytes:
    return json.dumps(obj, sort_keys=True, separators=(",", ":"), ensure_ascii=False).encode("utf-8")


def _url_digest(url: str | ImageRef) -> str:
    # An ImageRef's digest is that of the data URL it becomes, so both key the same.
    return url.sha256 if isinstance(url, ImageRef) else hashlib.sha256(url.encode("utf-8")).hexdigest()


def _key_messages(messages: list[dict[str, Any]]) -> list[Any]:
    """The messages with each inline image (data URL) replaced by its sha256.

    Same identity as hashing the image bytes, without serializing megabytes of base64 into the
    canonical JSON for every request.
    """
    out: list[Any] = []
    for message in messages:
        content = message.get("content") if isinstance(message, dict) else None
        if isinstance(content, list):
            parts = []
            for part in content:
                image_url = part.get("image_url") if isinstance(part, dict) else None
                url = image_url.get("url") if isinstance(image_url, dict) else None
                if isinstance(url, ImageRef) or (isinstance(url, str) and url.startswith("data:")):
                    part = {**part, "image_url": {**image_url, "url": "sha256:" + _url_digest(url)}}
                parts.append(part)
            message = {**message, "content": parts}
        out.append(message)
    return out


def cache_key(body: dict[str, Any], salt: str | None = None) -> str:
    """sha256 of the canonical JSON of a request body (plus salt): the answer cache key."""
    view = {**body, "messages": _key_messages(body.get("messages") or [])}
    digest = hashlib.sha256(_canonical({"v": CACHE_VERSION, "body": view, "salt": salt}))
    return digest.hexdigest()


def cached_result(key: str, entry: dict[str, Any]) -> ChatResult:
    """The result of request `key` served from a cache entry (`AnswerCache.get`)."""
    texts = list(entry["texts"])
    return ChatResult(
        key=key,
        text=texts[0],
        prompt_tokens=int(entry.get("prompt_tokens") or 0),
        completion_tokens=int(entry.get("completion_tokens") or 0),
        cached=True,
        texts=texts,
        finish_reason=entry.get("finish_reason"),
        logprobs=entry.get("logprobs"),
    )


class AnswerCache:
    """The answers of one endpoint's model under `root`; `root` None: no cache (every get misses)."""

    def __init__(self, root: Path | None, model: str) -> None:
        self.root = root
        self.model = model
        self._made_dirs: set[str] = set()

    def path(self, digest: str) -> Path:
        assert self.root is not None
        return self.root / digest[:2] / digest[2:4] / f"{digest}.json"

    def get(self, digest: str) -> dict[str, Any] | None:
        """The entry stored under `digest`, or None (no cache, no entry, or a damaged one)."""
        if self.root is None:
            return None
        try:
            with open(self.path(digest), "rb") as handle:
                entry = json.loads(handle.read())
            if entry.get("v") == CACHE_VERSION and entry["texts"]:
                return entry
        except FileNotFoundError:
            return None
        except (OSError, ValueError, KeyError, TypeError, AttributeError):
            pass  # a damaged entry is a miss; the fresh answer overwrites it
        return None

    def put(self, digest: str, result: ChatResult) -> None:
        """Store an answered `result` under `digest` (atomically; a failed write is only logged)."""
        if self.root is None:
            return
        path = self.path(digest)
        folder = str(path.parent)
        entry = {
            "v": CACHE_VERSION,
            "model": self.model,
            "texts": result.texts,
            "finish_reason": result.finish_reason,
            "prompt_tokens": result.prompt_tokens,
            "completion_tokens": result.completion_tokens,
            "created": time.time(),
        }
        if result.logprobs is not None:
            entry["logprobs"] = result.logprobs
        # Unique temp name per process and write, so writers on several nodes never collide.
        tmp = f"{folder}/.{digest}.{os.getpid()}.{uuid.uuid4().hex[:8]}.tmp"
        try:
            if folder not in self._made_dirs:
                os.makedirs(folder, exist_ok=True)
                self._made_dirs.add(folder)
            with open(tmp, "wb") as handle:
                handle.write(_canonical(entry))
            # No fsync: a kill cannot tear the renamed file, and an entry damaged by a power cut
            # reads as a miss and is simply asked again; fsync per answer is slow on NFS.
            os.replace(tmp, path)
        except OSError as err:
            log.warning("could not write cache entry %s: %s", path, err)
            with contextlib.suppress(OSError):
                os.unlink(tmp)
