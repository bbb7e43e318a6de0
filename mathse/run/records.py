"""The rows that pass between stages: the problem schema (read from JSONL with errors that name file,
line and record) and the typed rows one stage writes and another reads (D_SFT, reasoning paths,
verdicts, reflections). Fields are declared in their on-disk order, so the JSON stays the same."""

from __future__ import annotations

import json
from collections.abc import Callable, Container, Iterable, Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TypeVar

from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator

from mathse.run.errors import DataError
from mathse.run.storage import atomic_write_jsonl

__all__ = [
    "DataError",
    "ImageRecord",
    "JudgedPathRow",
    "PathRow",
    "Problem",
    "ProblemIndex",
    "ReflectionRow",
    "Row",
    "SftExample",
    "SftRow",
    "VerdictRow",
    "iter_problems",
    "iter_records",
    "read_problems",
    "read_records",
    "write_problems",
]


class ImageRecord(BaseModel):
    """A JSONL record with an id and images: the shape every input file of MathSE shares."""

    model_config = ConfigDict(extra="ignore", frozen=True)

    id: str = Field(min_length=1)
    images: tuple[str, ...] = ()

    @field_validator("id", "answer", mode="before", check_fields=False)
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


class Problem(ImageRecord):
    """A math problem: a question with zero or more images and a reference answer."""

    question: str = Field(min_length=1)
    answer: str
    solution: str | None = None
    source: str | None = None

    def to_json(self) -> dict[str, object]:
        return self.model_dump(mode="json", exclude_none=True)


R = TypeVar("R", bound=ImageRecord)


def read_records(path: Path, model: type[R], image_root: Path | None = None, **options: Any) -> list[R]:
    """Read and validate every record of a JSONL file before anything is written (`iter_records`, its options)."""
    return list(iter_records(path, model, image_root, **options))


def iter_records(
    path: Path,
    model: type[R],
    image_root: Path | None = None,
    *,
    check_images: bool = True,
    unique_ids: bool = True,
    check: Callable[[R], str | None] | None = None,
    what: str = "records",
) -> Iterator[R]:
    """The records of a JSONL file one at a time, each validated as it is read (only the ids are
    kept, for the duplicate check): a stage that must not write before every record is valid reads
    them through once first, then again to work on them, and never holds them all.

    Image paths are made absolute (relative ones resolve against `image_root`, else the file's
    folder). Raises DataError naming `file:line` for a bad line (`check` may add a reason of its
    own), or the record id for a missing image; with `unique_ids`, duplicate ids are errors too.
    """
    for _, record in _scan(path, model, image_root, check_images=check_images, unique_ids=unique_ids, check=check,
                           what=what):
        yield record


def _scan(
    path: Path,
    model: type[R],
    image_root: Path | None,
    *,
    check_images: bool = True,
    unique_ids: bool = True,
    check: Callable[[R], str | None] | None = None,
    what: str = "records",
) -> Iterator[tuple[int, R]]:
    """(byte offset of its line, record) for each record of the file, validated (see `iter_records`)."""
    if not path.is_file():
        raise DataError(f"{path}: file not found")
    root = image_root or path.parent
    first_line: dict[str, int] = {}
    offset = 0
    with path.open("rb") as handle:
        for lineno, raw in enumerate(handle, start=1):
            start, offset = offset, offset + len(raw)
            try:
                line = raw.decode("utf-8")
            except UnicodeDecodeError as exc:
                raise DataError(f"{path}:{lineno}: not UTF-8 text ({exc.reason} at byte {start + exc.start})") from None
            if not line.strip():
                continue
            where = f"{path}:{lineno}"
            record = _parse_line(line, where, model)
            if unique_ids and record.id in first_line:
                raise DataError(f"{where}: duplicate id {record.id!r} (first on line {first_line[record.id]})")
            first_line.setdefault(record.id, lineno)
            if check is not None and (problem := check(record)):
                raise DataError(f"{where}: {problem}")
            yield start, record.model_copy(update={"images": _resolve_images(record, root, where, check_images)})
    if not first_line:
        raise DataError(f"{path}: no {what} in file")


class ProblemIndex(Mapping[str, Problem]):
    """The problems of a JSONL file by id. Every record is validated once, on open, but only
    id -> byte offset is kept: a problem is read back from the file when asked for, so a pool of
    240K problems costs its ids, not its text."""

    def __init__(self, path: Path, image_root: Path | None = None, exclude: Container[str] = frozenset()) -> None:
        self.path = path
        self._root = image_root or path.parent
        scan = _scan(path, Problem, image_root, what="problems")
        self._offsets = {p.id: offset for offset, p in scan if p.id not in exclude}

    def __getitem__(self, pid: str) -> Problem:
        offset = self._offsets[pid]
        with self.path.open("rb") as handle:
            handle.seek(offset)
            line = handle.readline().decode("utf-8")
        where = f"{self.path} (byte {offset})"
        problem = _parse_line(line, where, Problem)  # validated on open: fails only if the file changed since
        return problem.model_copy(update={"images": _resolve_images(problem, self._root, where, check=False)})

    def __iter__(self) -> Iterator[str]:
        return iter(self._offsets)

    def __len__(self) -> int:
        return len(self._offsets)


def read_problems(path: Path, image_root: Path | None = None, check_images: bool = True) -> list[Problem]:
    """The problems of a JSONL file (see `read_records`); ids key every later stage's records."""
    return read_records(path, Problem, image_root, check_images=check_images, what="problems")


def iter_problems(path: Path, image_root: Path | None = None) -> Iterator[Problem]:
    """The problems of a JSONL file one at a time (see `iter_records`)."""
    return iter_records(path, Problem, image_root, what="problems")


def _parse_line(line: str, where: str, model: type[R]) -> R:
    try:
        obj = json.loads(line)
    except json.JSONDecodeError as exc:
        raise DataError(f"{where}: invalid JSON ({exc.msg} at column {exc.colno})") from None
    except RecursionError:
        raise DataError(f"{where}: invalid JSON (nested too deeply)") from None
    if not isinstance(obj, dict):
        raise DataError(f"{where}: expected a JSON object, got {type(obj).__name__}")
    try:
        return model.model_validate(obj)
    except ValidationError as exc:
        err = exc.errors()[0]
        field = ".".join(str(p) for p in err["loc"]) or "record"
        raise DataError(f"{where}: {field}: {err['msg']}") from None


def _resolve_images(record: ImageRecord, root: Path, where: str, check: bool) -> tuple[str, ...]:
    try:
        resolved = tuple(str(_resolve_image(img, root)) for img in record.images)
    except ValueError as exc:  # "embedded null byte"
        raise DataError(f"{where}: record {record.id!r}: invalid image path ({exc})") from None
    for img in resolved if check else ():
        try:
            found = img.startswith(("http://", "https://", "data:")) or Path(img).is_file()
        except OSError as exc:  # e.g. a file name too long for the filesystem
            raise DataError(f"{where}: record {record.id!r}: unusable image path ({exc.strerror})") from None
        if not found:
            shown = img if img.isprintable() else repr(img)  # one error, one line
            raise DataError(f"{where}: record {record.id!r}: image not found: {shown}")
    return resolved


def _resolve_image(ref: str, root: Path) -> Path | str:
    if ref.startswith(("http://", "https://", "data:")):
        return ref
    path = Path(ref).expanduser()
    return path if path.is_absolute() else (root / path).resolve()


def write_problems(path: Path, problems: Iterable[Problem]) -> int:
    return atomic_write_jsonl(path, (p.to_json() for p in problems))


# ---------------------------------------------------------------------------------------------
# Rows between stages


class Row(BaseModel):
    """A JSONL row written by one stage and read by another; a renamed or missing field fails here."""

    model_config = ConfigDict(extra="ignore", frozen=True)

    def to_json(self) -> dict[str, Any]:
        # exclude_unset: an optional key absent from a row (VerdictRow.error) stays absent on disk.
        return self.model_dump(mode="json", exclude_unset=True)


class SftRow(Row):
    """A D_SFT example (distill/ and evolve/ d_sft.jsonl): the student prompt, images, target response."""

    id: str
    prompt: str
    images: list[str]
    answer: str
    response: str
    origin: str  # "seed" (its own solution), "teacher" or "evolve_round_<r>"


class PathRow(Row):
    """A reasoning path the student generated in an evolve round (accepted paths: chosen.jsonl)."""

    id: str
    question: str
    images: list[str]
    answer: str
    round: int
    sample: int
    prompt: str
    reasoning: str

    @classmethod
    def of(cls, problem: Problem, r: int, sample: int, prompt: str, reasoning: str) -> PathRow:
        return cls(id=problem.id, question=problem.question, images=list(problem.images), answer=problem.answer,
                   round=r, sample=sample, prompt=prompt, reasoning=reasoning)


class JudgedPathRow(PathRow):
    """A path judged incorrect (rejected.jsonl): where it went wrong, for reflect's teacher prompt."""

    error_step: int | None
    analysis: str | None
    verdict_source: str | None = None
    orm_raw: str | None = None


class VerdictRow(Row):
    """One verdict of a stage's journal (orm_reflections/<stage>.jsonl); `error` only when unjudged."""

    key: str
    id: str
    path: str
    steps: list[str]
    orm: dict[str, Any] | None
    rule: dict[str, Any] | None
    final: dict[str, Any]
    asks: int = 1  # ORM requests made for it (a reply that did not parse is asked again once)
    error: str | None = None


class ReflectionRow(Row):
    """A kept reflection (orm_reflections/reflection_rows.jsonl): draft, reflection, corrected path."""

    instruction: str
    input: str
    draft: str
    reflection: str
    output: str
    id: str
    key: str
    images: list[str]
    answer: str
    round: int
    error_step: int | None
    analysis: str | None


@dataclass(frozen=True)
class SftExample:
    """One supervised example: a user prompt (with images) and the target response."""

    prompt: str
    response: str
    images: tuple[str, ...] = ()
    system: str | None = None
    id: str | None = None  # the record it came from, to name it when it is left out
    # Earlier (user, assistant) turns before `prompt`: a multi-turn sample. Trained on only with
    # LLaMA-Factory's default; `mask_history: true` keeps the loss on the last response alone.
    history: tuple[tuple[str, str], ...] = ()
