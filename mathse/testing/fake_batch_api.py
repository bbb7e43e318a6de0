"""The Batch API routes of the fake OpenAI server: ``/v1/files`` (upload, retrieve, content) and
``/v1/batches`` (create, retrieve, list, cancel), with scripted outcomes (see `FakeOpenAIServer`).
A mixin: the server holds the state (`files`, `batches`, `batch_outcomes`, ...) and the lock."""

from __future__ import annotations

import itertools
import json
import time
from email import policy
from email.parser import BytesParser
from typing import Any

from mathse.testing.fake_http import FakeHTTPError, Response, error_response

__all__ = ["BATCH_OUTCOMES", "BatchRoutes"]

BATCH_OUTCOMES: tuple[str, ...] = ("completed", "errors", "expired", "failed")


class BatchRoutes:
    """Batch API handlers; called with the server's lock held."""

    files: dict[str, dict[str, Any]]
    batches: dict[str, dict[str, Any]]
    batch_outcomes: list[str]
    batch_polls: int
    hold_batches: bool
    _ids: itertools.count[int]

    def _completion(self, body: dict[str, Any], completion_id: str) -> dict[str, Any]:
        raise NotImplementedError


    def _batch_api(self, method: str, path: str, raw: bytes, headers: dict[str, str]) -> Response:
        parts = path.strip("/").split("/")
        if parts == ["files"] and method == "POST":
            return self._upload(raw, headers.get("content-type", ""))
        if parts[0] == "files" and len(parts) >= 2 and method == "GET":
            file = self.files.get(parts[1])
            if file is None:
                return error_response(404, f"no file {parts[1]}")
            if parts[2:] == ["content"]:
                return Response(200, file["_data"])
            return Response(200, json.dumps(_public(file)).encode())
        if parts == ["batches"] and method == "POST":
            return self._create_batch(raw)
        if parts == ["batches"] and method == "GET":
            data = [_public(b) for b in reversed(self.batches.values())]
            return Response(200, json.dumps({"object": "list", "data": data, "has_more": False}).encode())
        if parts[0] == "batches" and len(parts) >= 2:
            batch = self.batches.get(parts[1])
            if batch is None:
                return error_response(404, f"no batch {parts[1]}")
            if parts[2:] == ["cancel"] and method == "POST":
                if batch["status"] not in ("completed", "failed", "expired", "cancelled"):
                    self._finish_batch(batch, "cancelled")
            elif method == "GET":
                self._advance(batch)
            return Response(200, json.dumps(_public(batch)).encode())
        return error_response(404, f"no route {method} /v1{path}")

    def _upload(self, raw: bytes, content_type: str) -> Response:
        if not content_type.startswith("multipart/form-data"):
            return error_response(400, "files: expected multipart/form-data")
        message = BytesParser(policy=policy.HTTP).parsebytes(f"Content-Type: {content_type}\r\n\r\n".encode() + raw)
        fields = {p.get_param("name", header="content-disposition"): p for p in message.iter_parts()}
        if "file" not in fields or fields.get("purpose") is None:
            return error_response(400, "files: 'file' and 'purpose' are required")
        data = fields["file"].get_payload(decode=True) or b""
        file_id = f"file-fake-{next(self._ids)}"
        self.files[file_id] = {
            "id": file_id, "object": "file", "bytes": len(data), "created_at": int(time.time()),
            "filename": fields["file"].get_filename() or "upload.jsonl",
            "purpose": fields["purpose"].get_payload(decode=True).decode(), "status": "processed", "_data": data,
        }
        return Response(200, json.dumps(_public(self.files[file_id])).encode())

    def _create_batch(self, raw: bytes) -> Response:
        try:
            body = json.loads(raw)
        except ValueError:
            return error_response(400, "request body is not valid JSON")
        if body.get("input_file_id") not in self.files:
            return error_response(400, f"input_file_id {body.get('input_file_id')!r} not found")
        if body.get("endpoint") != "/v1/chat/completions" or body.get("completion_window") != "24h":
            return error_response(400, "endpoint must be /v1/chat/completions and completion_window 24h")
        index = len(self.batches)
        batch_id = f"batch_fake_{next(self._ids)}"
        self.batches[batch_id] = {
            "id": batch_id, "object": "batch", "endpoint": body["endpoint"], "errors": None,
            "input_file_id": body["input_file_id"], "completion_window": "24h", "status": "validating",
            "output_file_id": None, "error_file_id": None, "created_at": int(time.time()),
            "request_counts": {"total": 0, "completed": 0, "failed": 0}, "metadata": body.get("metadata"),
            "_outcome": self.batch_outcomes[index] if index < len(self.batch_outcomes) else "completed",
            "_polls": 0,
        }
        return Response(200, json.dumps(_public(self.batches[batch_id])).encode())

    def _advance(self, batch: dict[str, Any]) -> None:
        """One step of a batch's life per retrieve."""
        if batch["status"] == "validating":
            if batch["_outcome"] == "failed":
                self._finish_batch(batch, "failed")
                return
            batch["status"] = "in_progress"
            batch["request_counts"]["total"] = len(self._input_lines(batch))
        elif batch["status"] == "in_progress" and not (self.hold_batches or batch.get("_hold")):
            batch["_polls"] += 1
            if batch["_polls"] >= self.batch_polls:
                self._finish_batch(batch, "expired" if batch["_outcome"] == "expired" else "completed")

    def _input_lines(self, batch: dict[str, Any]) -> list[dict[str, Any]]:
        data = self.files[batch["input_file_id"]]["_data"]
        return [json.loads(line) for line in data.splitlines() if line.strip()]

    def _finish_batch(self, batch: dict[str, Any], status: str) -> None:
        """Answer the batch's lines per its outcome, write the output and error files."""
        batch["status"] = status
        if status == "failed":
            batch["errors"] = {"object": "list", "data": [
                {"code": "invalid_request", "message": "injected validation failure", "line": 1, "param": None}]}
            return
        lines = self._input_lines(batch)
        answer_upto = len(lines) // 2 if status == "expired" else 0 if status == "cancelled" else len(lines)
        output, errors = [], []
        for i, line in enumerate(lines):
            record: dict[str, Any] = {"id": f"batch_req_{next(self._ids)}", "custom_id": line["custom_id"]}
            if i >= answer_upto:
                code = f"batch_{status}"
                errors.append({**record, "response": None, "error": {"code": code, "message": f"{code} (injected)"}})
                continue
            if batch["_outcome"] == "errors" and i % 2 == 1:
                error = {"error": {"message": "internal error (injected)", "type": "server_error"}}
                errors.append({**record, "response": {"status_code": 500, "body": error}, "error": None})
                continue
            try:
                body = self._completion(line["body"], f"chatcmpl-batch-{next(self._ids)}")
            except FakeHTTPError as err:
                error = {"error": {"message": err.message, "type": "invalid_request_error"}}
                errors.append({**record, "response": {"status_code": err.status, "body": error}, "error": None})
                continue
            self.batch_answers.append(line["custom_id"])
            output.append({**record, "response": {"status_code": 200, "request_id": record["id"], "body": body},
                           "error": None})
        batch["request_counts"] = {"total": len(lines), "completed": len(output), "failed": len(errors)}
        for kind, rows in (("output_file_id", output), ("error_file_id", errors)):
            if rows:
                file_id = f"file-fake-{next(self._ids)}"
                data = "".join(json.dumps(r) + "\n" for r in rows).encode()
                self.files[file_id] = {"id": file_id, "object": "file", "bytes": len(data), "purpose": "batch_output",
                                       "created_at": int(time.time()), "filename": f"{kind}.jsonl",
                                       "status": "processed", "_data": data}
                batch[kind] = file_id


def _public(obj: dict[str, Any]) -> dict[str, Any]:
    return {k: v for k, v in obj.items() if not k.startswith("_")}
