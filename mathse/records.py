"""The one problem schema, read from JSONL with errors that name file, line and record."""

from __future__ import annotations

import json
from collections.abc import Iterable
from pathlib import Path

from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator

from mathse.storage import atomic_write_jsonl

__all__ = ["DataError", "Problem", "read_problems", "write_problems"]


class DataError(Exception):
    """Bad input data; the message is one line naming the file and line or the record id."""


class Problem(BaseModel):
    """A math problem: a question with zero or more images and a reference answer."""

    model_config = ConfigDict(extra="ignore", frozen=True)

    id: str = Field(min_length=1)
    question: str = Field(min_length=1)
    images: tuple[str, ...] = ()
    answer: str
    solution: str | None = None
    source: str | None = None

    @field_validator("id", "answer", mode="before")
    @classmethod
    def _scalar_to_str(cls, value: object) -> object:
        # Datasets often store ids and answers as numbers: 7 and "7" mean the same here.
        if isinstance(value, bool):
            return value
        return str(value) if isinstance(value, int | float) else value

    @field_validator("images", mode="before")
    @classmethod
    def _one_image_or_many(cls, value: object) -> object:
        if value is None:
            return ()
        return (value,) if isinstance(value, str) else value

    def to_json(self) -> dict[str, object]:
        return self.model_dump(mode="json", exclude_none=True)


def read_problems(path: Path, image_root: Path | None = None, check_images: bool = True) -> list[Problem]:
    """Read and validate every problem of a JSONL file before anything is written.

    Image paths are made absolute (relative ones resolve against `image_root`, else the file's
    folder). Raises DataError naming `file:line` for a bad line, or the record id for a missing
    image; duplicate ids are errors too, since ids key every later stage's records.
    """
    if not path.is_file():
        raise DataError(f"{path}: file not found")
    root = image_root or path.parent
    problems: list[Problem] = []
    first_line: dict[str, int] = {}
    with path.open("r", encoding="utf-8") as handle:
        try:
            lines = list(enumerate(handle, start=1))
        except UnicodeDecodeError as exc:
            raise DataError(f"{path}: not UTF-8 text ({exc.reason} at byte {exc.start})") from None
    for lineno, line in lines:
        if not line.strip():
            continue
        where = f"{path}:{lineno}"
        try:
            obj = json.loads(line)
        except json.JSONDecodeError as exc:
            raise DataError(f"{where}: invalid JSON ({exc.msg} at column {exc.colno})") from None
        except RecursionError:
            raise DataError(f"{where}: invalid JSON (nested too deeply)") from None
        if not isinstance(obj, dict):
            raise DataError(f"{where}: expected a JSON object, got {type(obj).__name__}")
        try:
            problem = Problem.model_validate(obj)
        except ValidationError as exc:
            err = exc.errors()[0]
            field = ".".join(str(p) for p in err["loc"]) or "record"
            raise DataError(f"{where}: {field}: {err['msg']}") from None
        if problem.id in first_line:
            raise DataError(f"{where}: duplicate id {problem.id!r} (first on line {first_line[problem.id]})")
        first_line[problem.id] = lineno
        try:
            resolved = tuple(str(_resolve_image(img, root)) for img in problem.images)
        except ValueError as exc:  # "embedded null byte"
            raise DataError(f"{where}: record {problem.id!r}: invalid image path ({exc})") from None
        if check_images:
            for img in resolved:
                try:
                    found = Path(img).is_file()
                except OSError as exc:  # e.g. a file name too long for the filesystem
                    raise DataError(f"{where}: record {problem.id!r}: unusable image path ({exc.strerror})") from None
                if not found:
                    raise DataError(f"{where}: record {problem.id!r}: image not found: {img}")
        problems.append(problem.model_copy(update={"images": resolved}))
    if not problems:
        raise DataError(f"{path}: no problems in file")
    return problems


def _resolve_image(ref: str, root: Path) -> Path | str:
    if ref.startswith(("http://", "https://", "data:")):
        return ref
    path = Path(ref).expanduser()
    return path if path.is_absolute() else (root / path).resolve()


def write_problems(path: Path, problems: Iterable[Problem]) -> int:
    return atomic_write_jsonl(path, (p.to_json() for p in problems))
