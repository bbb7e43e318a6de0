"""HTTP plumbing of the fake OpenAI server: a response, an error body as OpenAI writes it, and
the exception a scripted reply raises to answer with an HTTP status."""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from http import HTTPStatus

__all__ = ["FakeHTTPError", "Response", "error_response"]


class FakeHTTPError(Exception):
    """Raise from a `replies` callable to answer with this HTTP status (e.g. 400) instead."""

    def __init__(self, status: int, message: str = "", headers: dict[str, str] | None = None) -> None:
        super().__init__(message or HTTPStatus(status).phrase)
        self.status = status
        self.message = message or HTTPStatus(status).phrase
        self.headers = headers or {}


@dataclass
class Response:
    status: int
    payload: bytes
    headers: dict[str, str] = field(default_factory=dict)
    disconnect: bool = False


def error_response(status: int, message: str, headers: dict[str, str] | None = None) -> Response:
    payload = {"error": {"message": message, "type": "fake_server_error", "code": status}}
    return Response(status, json.dumps(payload).encode(), dict(headers or {}))
