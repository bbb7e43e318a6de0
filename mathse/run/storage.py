"""Crash-safe files: atomic writes, append-only JSONL journals, completion markers.

A stage may be killed at any instant. Whole files are written to a temp file and renamed into
place, so a reader sees the old or the new file, never half of one. Streams of results go to an
append-only journal; a torn last line (the kill landed mid-write) is dropped on read, and records
are keyed so a resumed run can skip what is already there. A unit of work is finished only when
its marker exists, written last (datatrove's habit).
"""

from __future__ import annotations

import contextlib
import json
import os
import tempfile
from collections.abc import Iterable, Iterator
from pathlib import Path
from typing import IO, Any

from mathse.run.errors import CorruptFileError

MARKER_NAME = ".mathse_done.json"


def _default_file_mode() -> int:
    # mkstemp creates 0600 files; outputs on a shared cluster filesystem should get the usual
    # mode (0666 minus the umask), as an ordinary open() would give them.
    mask = os.umask(0)
    os.umask(mask)
    return 0o666 & ~mask


_FILE_MODE = _default_file_mode()


@contextlib.contextmanager
def atomic_open(path: Path, binary: bool = False) -> Iterator[Any]:
    """A handle on a temp file beside `path` (text, or bytes with `binary`), renamed over `path`
    only if the block succeeds."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        os.fchmod(fd, _FILE_MODE)
        with os.fdopen(fd, "wb") if binary else os.fdopen(fd, "w", encoding="utf-8") as handle:
            yield handle
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def atomic_write_text(path: Path, text: str) -> None:
    """Write `text` to `path` via a temp file in the same folder and an atomic rename."""
    with atomic_open(path) as handle:
        handle.write(text)


def atomic_write_bytes(path: Path, data: bytes) -> None:
    with atomic_open(path, binary=True) as handle:
        handle.write(data)


def atomic_write_json(path: Path, obj: Any) -> None:
    atomic_write_text(path, json.dumps(obj, ensure_ascii=False, indent=2) + "\n")


def atomic_write_jsonl(path: Path, rows: Iterable[dict[str, Any]]) -> int:
    """Stream `rows` into `path` atomically; returns the number of rows written."""
    count = 0
    with atomic_open(path) as handle:
        for row in rows:
            write_line(handle, row)
            count += 1
    return count


def write_line(handle: IO[str], row: dict[str, Any]) -> None:
    """One JSONL row into a text handle (e.g. several `atomic_open` files filled in one pass)."""
    handle.write(json.dumps(row, ensure_ascii=False))
    handle.write("\n")


def read_json(path: Path) -> Any:
    return json.loads(path.read_text(encoding="utf-8"))


def iter_jsonl(path: Path) -> Iterator[dict[str, Any]]:
    """Rows of a JSONL file written by MathSE; a torn final line (killed mid-append) is skipped."""
    if not path.exists():
        return
    with path.open("rb") as handle:
        for lineno, raw in enumerate(handle, start=1):
            if not raw.endswith(b"\n"):
                return  # torn write: the process died before finishing this line
            if not raw.strip():
                continue
            yield _parse_row(raw, f"{path}:{lineno}")


def truncate_torn_tail(path: Path) -> None:
    """Cut a JSONL file back to its last complete line (a row torn by a kill is dropped)."""
    if not path.exists():
        return
    size = path.stat().st_size
    if size == 0:
        return
    with path.open("r+b") as handle:
        handle.seek(size - 1)
        if handle.read(1) == b"\n":
            return
        # Find the last complete line without reading the whole file.
        keep = 0
        block = 1 << 16
        end = size
        while end > 0:
            start = max(0, end - block)
            handle.seek(start)
            found = handle.read(end - start).rfind(b"\n")
            if found >= 0:
                keep = start + found + 1
                break
            end = start
        handle.truncate(keep)


def count_lines(path: Path) -> int:
    """The number of lines of a file (0 when absent), read in blocks."""
    if not path.exists():
        return 0
    found = 0
    with path.open("rb") as handle:
        while block := handle.read(1 << 20):
            found += block.count(b"\n")
    return found


class Journal:
    """An append-only JSONL file of keyed records, safe to resume after a kill.

    On open, a torn last line is truncated away and the keys already present are indexed, so
    `append` of an existing key is a no-op: a resumed run never duplicates a record. Only the
    index (key -> byte offset of the key's latest row) stays in memory; a row is read back from
    the file when asked for, so a journal of 300K verdicts costs a few dozen MiB, not their text.
    """

    def __init__(self, path: Path, key_field: str = "key") -> None:
        self.path = path
        self.key_field = key_field
        path.parent.mkdir(parents=True, exist_ok=True)
        truncate_torn_tail(path)
        self._index: dict[str, int] = {}
        offset = 0
        if path.exists():
            with path.open("rb") as handle:
                for lineno, raw in enumerate(handle, start=1):
                    if raw.strip():
                        # The last row of a key wins (see `replace`); its key keeps its first place.
                        self._index[str(_parse_row(raw, f"{path}:{lineno}")[key_field])] = offset
                    offset += len(raw)
        self._size = offset
        self._handle = path.open("ab")
        self._reader: Any = None  # opened on the first read

    def __contains__(self, key: str) -> bool:
        return key in self._index

    def __len__(self) -> int:
        return len(self._index)

    def keys(self) -> Iterator[str]:
        return iter(self._index)

    def get(self, key: str, default: Any = None) -> Any:
        """The latest row of `key`, read back from the file, or `default`."""
        offset = self._index.get(key)
        return default if offset is None else self._read_at(offset)

    def __getitem__(self, key: str) -> dict[str, Any]:
        offset = self._index[key]
        return self._read_at(offset)

    def items(self) -> Iterator[tuple[str, dict[str, Any]]]:
        """(key, latest row) in the order the keys first appeared, read from the file one by one."""
        for key, offset in list(self._index.items()):
            yield key, self._read_at(offset)

    def values(self) -> Iterator[dict[str, Any]]:
        for _, row in self.items():
            yield row

    def _read_at(self, offset: int) -> dict[str, Any]:
        if self._reader is None:
            self._reader = self.path.open("rb")
        self._reader.seek(offset)
        return _parse_row(self._reader.readline(), f"{self.path} (byte {offset})")

    def append(self, row: dict[str, Any]) -> bool:
        """Append `row` unless its key is already present; returns whether it was written."""
        key = str(row[self.key_field])
        if key in self._index:
            return False
        self._write(key, row)
        return True

    def replace(self, row: dict[str, Any]) -> None:
        """Append `row` even if its key is present: it supersedes the earlier row (e.g. a verdict
        asked again). The file stays append-only, so a kill never loses the earlier row."""
        self._write(str(row[self.key_field]), row)

    def _write(self, key: str, row: dict[str, Any]) -> None:
        data = (json.dumps(row, ensure_ascii=False) + "\n").encode("utf-8")
        self._handle.write(data)
        self._handle.flush()  # readers (`get`) see it at once
        self._index[key] = self._size
        self._size += len(data)

    def close(self) -> None:
        if self._reader is not None:
            self._reader.close()
            self._reader = None
        if not self._handle.closed:
            self._handle.flush()
            os.fsync(self._handle.fileno())
            self._handle.close()

    def __enter__(self) -> Journal:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def _parse_row(raw: bytes, where: str) -> dict[str, Any]:
    try:
        return json.loads(raw)
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        reason = exc.msg if isinstance(exc, json.JSONDecodeError) else "not UTF-8"
        raise CorruptFileError(
            f"{where}: damaged line ({reason}); restore the file or delete it to redo its work"
        ) from None


def mark_done(folder: Path, stats: dict[str, Any]) -> None:
    """Write the completion marker (with the unit's stats) last, after all its outputs."""
    atomic_write_json(folder / MARKER_NAME, stats)


def is_done(folder: Path) -> bool:
    return (folder / MARKER_NAME).is_file()


def read_marker(folder: Path) -> dict[str, Any]:
    return read_json(folder / MARKER_NAME)


def clear_marker(folder: Path) -> None:
    (folder / MARKER_NAME).unlink(missing_ok=True)
