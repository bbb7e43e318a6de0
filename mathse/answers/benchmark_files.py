"""Reading evaluation-benchmark files: data files in a folder, their records, typed fields, images.

The layout-independent half of loading a benchmark (`mathse.answers.evalsets` maps each published
layout onto `EvalItem`s): find a split's data file(s) in a folder (`data_files`), stream the
records of a JSON, JSONL or parquet file (`read_benchmark_file`), read fields with errors that
name the file, the record and the field (`DataError`), and turn image fields into absolute paths.

Embedded image bytes ({"bytes": ..., "path": ...}) are written once, named by content hash, to
the image cache folder and referenced by absolute path; relative image paths resolve against the
given roots (`image_root`, else the data file's folder, its parent, or the benchmark folder).
"""

from __future__ import annotations

import hashlib
import json
import math
import re
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from mathse.run.records import DataError
from mathse.run.storage import atomic_write_bytes

__all__ = [
    "ImageResolver",
    "Record",
    "data_files",
    "optional_number",
    "read_benchmark_file",
    "record_where",
    "str_list_field",
    "text_field",
]

_DATA_SUFFIXES = (".parquet", ".jsonl", ".json")  # preference order when a folder holds several


# ---------------------------------------------------------------------------------------------
# Files and records


@dataclass(frozen=True)
class Record:
    """One record of a data file, with where it came from."""

    where: str  # "file: record 3" / "file:4" (JSONL line), for error messages
    data: dict[str, Any]
    file: Path
    key: str | None = None  # the object key when the JSON is keyed by id (MathVista testmini.json)


def data_files(path: Path, split: str | None, default_split: str | None = None) -> list[Path]:
    """The data file(s) of a benchmark: `path` itself, or the `split` files in folder `path`.

    In a folder (and its subfolders, two levels deep) a file matches when its stem is the split
    or starts with "<split>-" (Hugging Face shards: data/testmini-00000-of-00001-<hash>.parquet).
    When several formats match, parquet wins over JSONL over JSON; shards are read in name order.
    """
    if path.is_file():
        return [path]
    if not path.is_dir():
        raise DataError(f"{path}: benchmark path not found")
    split = split or default_split
    if not split:
        raise DataError(f"{path}: is a folder; set the benchmark's split or point path at the data file")
    found: dict[str, list[Path]] = {}
    for candidate in sorted([*path.glob("*"), *path.glob("*/*")]):
        if candidate.suffix in _DATA_SUFFIXES and candidate.is_file():
            stem = candidate.name[: -len(candidate.suffix)]
            if stem == split or stem.startswith(f"{split}-"):
                found.setdefault(candidate.suffix, []).append(candidate)
    for suffix in _DATA_SUFFIXES:
        if suffix in found:
            return found[suffix]
    raise DataError(
        f"{path}: no data file for split {split!r} (looked for {split}.parquet, {split}-*.parquet, "
        f"{split}.jsonl, {split}.json here and one folder down)"
    )


def read_benchmark_file(path: Path) -> Iterator[Record]:
    """Records of one JSON (list, or object keyed by id), JSONL or parquet file."""
    if path.suffix == ".parquet":
        yield from _parquet_records(path)
    elif path.suffix == ".jsonl":
        yield from _jsonl_records(path)
    else:
        yield from _json_records(path)


def _parquet_records(path: Path) -> Iterator[Record]:
    import pyarrow.parquet as pq

    try:
        rows = pq.read_table(path).to_pylist()
    except Exception as exc:  # pyarrow raises ArrowInvalid, OSError, ... on a bad file
        raise DataError(f"{path}: not a readable parquet file ({type(exc).__name__}: {exc})") from None
    for i, row in enumerate(rows):
        yield Record(f"{path}: row {i}", row, path)


def _jsonl_records(path: Path) -> Iterator[Record]:
    try:
        lines = path.read_text(encoding="utf-8").splitlines()
    except UnicodeDecodeError as exc:
        raise DataError(f"{path}: not UTF-8 text ({exc.reason} at byte {exc.start})") from None
    for lineno, line in enumerate(lines, start=1):
        if not line.strip():
            continue
        try:
            obj = json.loads(line)
        except json.JSONDecodeError as exc:
            raise DataError(f"{path}:{lineno}: invalid JSON ({exc.msg} at column {exc.colno})") from None
        if not isinstance(obj, dict):
            raise DataError(f"{path}:{lineno}: expected a JSON object, got {type(obj).__name__}")
        yield Record(f"{path}:{lineno}", obj, path)


def _json_records(path: Path) -> Iterator[Record]:
    try:
        obj = json.loads(path.read_text(encoding="utf-8"))
    except UnicodeDecodeError as exc:
        raise DataError(f"{path}: not UTF-8 text ({exc.reason} at byte {exc.start})") from None
    except json.JSONDecodeError as exc:
        raise DataError(f"{path}: invalid JSON ({exc.msg} at line {exc.lineno} column {exc.colno})") from None
    if isinstance(obj, list):
        entries: list[tuple[str | None, Any]] = [(None, v) for v in obj]
    elif isinstance(obj, dict) and obj and all(isinstance(v, dict) for v in obj.values()):
        entries = list(obj.items())  # MathVista's testmini.json: {"1": {...}, "2": {...}}
    else:
        raise DataError(f"{path}: expected a list of records or an object of records keyed by id")
    for i, (key, value) in enumerate(entries):
        where = f"{path}: record {i}" if key is None else f"{path}: record {i} (key {key!r})"
        if not isinstance(value, dict):
            raise DataError(f"{where}: expected a JSON object, got {type(value).__name__}")
        yield Record(where, value, path, key)


# ---------------------------------------------------------------------------------------------
# Field access with errors that name file, record and field


def record_where(rec: Record, rid: str | None) -> str:
    """The record's location for an error message, with its id when the location lacks it."""
    return rec.where if rid is None or rec.key is not None else f"{rec.where} (id {rid!r})"


def text_field(
    rec: Record, name: str, rid: str | None = None, *, required: bool = True, allow_empty: bool = False
) -> str:
    """A string field (numbers are accepted as their text: datasets store 7 and "7" alike)."""
    if name not in rec.data or rec.data[name] is None:
        if required:
            raise DataError(f"{record_where(rec, rid)}: missing field {name!r}")
        return ""
    value = rec.data[name]
    if isinstance(value, bool) or not isinstance(value, str | int | float):
        raise DataError(f"{record_where(rec, rid)}: field {name!r}: expected text, got {type(value).__name__}")
    if isinstance(value, float) and value.is_integer():
        value = int(value)
    text = str(value)
    if required and not allow_empty and not text.strip():
        raise DataError(f"{record_where(rec, rid)}: field {name!r} is empty")
    return text


def str_list_field(rec: Record, names: tuple[str, ...], rid: str) -> list[str]:
    """The first of the fields `names` that is set, as a list of option texts ([] when none is)."""
    for name in names:
        value = rec.data.get(name)
        if value is None:
            continue
        if not isinstance(value, list | tuple) or not all(isinstance(v, str | int | float) for v in value):
            raise DataError(f"{record_where(rec, rid)}: field {name!r}: expected a list of option texts")
        return [str(v) for v in value]
    return []


def optional_number(value: Any) -> float | None:
    """A number from a field value; None for a missing, boolean, non-numeric or NaN value."""
    if value is None or isinstance(value, bool):
        return None
    try:
        number = float(value)
    except (TypeError, ValueError):
        return None
    return None if math.isnan(number) else number


# ---------------------------------------------------------------------------------------------
# Images


class ImageResolver:
    """Turns image fields (paths, image structs with bytes, lists of either) into absolute paths."""

    def __init__(self, cache_dir: Path, roots: list[Path], materialize: bool) -> None:
        self.cache_dir = cache_dir
        self.roots = list(dict.fromkeys(r.resolve() for r in roots))
        self.materialize = materialize

    def collect(self, rec: Record, rid: str, *names: str) -> tuple[str, ...]:
        """Images of the first of `names` that holds any (e.g. decoded_image before image)."""
        for name in names:
            found = self._value(rec.data.get(name), rec, rid, name)
            if found:
                return tuple(found)
        return ()

    def _value(self, value: Any, rec: Record, rid: str, name: str) -> list[str]:
        if value is None or value == "":
            return []
        if isinstance(value, list | tuple):
            return [img for v in value for img in self._value(v, rec, rid, name)]
        if isinstance(value, str):
            return [self._path(value, rec, rid)]
        if isinstance(value, dict):
            data, ref = value.get("bytes"), value.get("path")
            if isinstance(data, bytes | bytearray) and data:
                return [self._embedded(bytes(data), ref)]
            if isinstance(ref, str) and ref:
                return [self._path(ref, rec, rid)]
            return []
        raise DataError(f"{record_where(rec, rid)}: field {name!r}: expected an image path or image struct")

    def _path(self, ref: str, rec: Record, rid: str) -> str:
        path = Path(ref).expanduser()
        candidates = [path] if path.is_absolute() else [root / path for root in self.roots]
        for candidate in candidates:
            if candidate.is_file():
                return str(candidate.resolve())
        looked = ", ".join(str(r) for r in self.roots) if not path.is_absolute() else "absolute path"
        raise DataError(f"{record_where(rec, rid)}: image not found: {ref} (looked under {looked}; set image_root)")

    def _embedded(self, data: bytes, name_hint: str | None) -> str:
        # Named by content: a rerun rewrites nothing, and MathVerse's versions sharing a diagram
        # share one file.
        digest = hashlib.sha256(data).hexdigest()[:24]
        target = self.cache_dir / f"{digest}{_image_suffix(data, name_hint)}"
        if self.materialize and not target.is_file():
            atomic_write_bytes(target, data)
        return str(target.resolve())


def _image_suffix(data: bytes, name_hint: str | None) -> str:
    signatures = ((b"\x89PNG", ".png"), (b"\xff\xd8", ".jpg"), (b"GIF8", ".gif"), (b"BM", ".bmp"))
    for magic, suffix in signatures:
        if data.startswith(magic):
            return suffix
    if data[:4] == b"RIFF" and data[8:12] == b"WEBP":
        return ".webp"
    hint = Path(name_hint).suffix.lower() if name_hint else ""
    return hint if re.fullmatch(r"\.[a-z0-9]{2,5}", hint) else ".img"  # PIL sniffs the content anyway
