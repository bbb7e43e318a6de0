"""Evaluation benchmarks read from local files in their published layouts -> `EvalItem`s.

Nothing is downloaded: `eval.benchmarks[].path` is a data file (JSON, JSONL or parquet) or a
folder holding one (e.g. a clone of the Hugging Face dataset repo), and `split` picks the file in
a folder (`testmini.json`, `testmini.parquet`, `data/testmini-00000-of-00001.parquet`, ...).

Layouts (field names as published):

* mathvista  (AI4Math/MathVista): pid, question, image (relative path), decoded_image (parquet
  image struct), choices, unit, precision, answer (the option *text* for multiple choice),
  question_type multi_choice|free_form, answer_type integer|float|text|list, metadata{...}, query.
  GitHub `data/testmini.json` is an object keyed by pid; the HF parquet is one row per problem.
* mathverse  (AI4Math/MathVerse): sample_index, problem_index, problem_version, question (holds the
  "Choices:" block for multiple choice; empty for Vision Only), image (path, "" for Text Only, or
  parquet image struct), answer (a letter for multiple choice), question_type multi-choice|free-form,
  metadata{split, source, subject, subfield}, query_wo, query_cot.
* mathvision (MathLLMs/MathVision, github mathllm/MATH-V): id, question (with <imageN> tags),
  options (list; empty for free form, sometimes ["A".."E"] when the options are drawn in the image),
  image (path), decoded_image (parquet struct), answer (a letter for multiple choice), solution,
  level, subject. Splits test and testmini.
* mathvl     (MathVL-test; no public layout, so ours): JSON/JSONL/parquet records with question,
  answer, optional id (default: the record's index), image or images (path(s) or image structs),
  options/choices (list; answer is a letter or one option's text), question_type, subject, ...
* jsonl      the project's Problem schema (mathse.run.records.read_problems).

Embedded image bytes ({"bytes": ..., "path": ...}) are written once, named by content hash, to
`output/eval/images/<bench>/` and referenced by absolute path; relative image paths resolve
against `image_root`, else the data file's folder, its parent, or the benchmark folder.
A malformed file or record raises `DataError` naming the file, the record and the field.
"""

from __future__ import annotations

import hashlib
import json
import math
import re
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

from mathse.answers.extraction import is_choice_question, normalize_answer
from mathse.run.config import BenchmarkSpec
from mathse.run.records import DataError, Problem, read_problems
from mathse.run.storage import atomic_write_bytes

__all__ = [
    "BREAKDOWN_FIELDS",
    "DEFAULT_SPLITS",
    "LETTERS",
    "MATHVERSE_VERSIONS",
    "SUBSET_FIELDS",
    "EvalItem",
    "data_files",
    "load_benchmark",
    "ordered_subsets",
    "read_benchmark_file",
]

LETTERS = "ABCDEFGH"
# Split used when `split` is unset and `path` is a folder. MathVision's papers report the full test set.
DEFAULT_SPLITS = {"mathvista": "testmini", "mathverse": "testmini", "mathvision": "test", "mathvl": "test"}
# The results table gets one extra column per value of this metadata field.
SUBSET_FIELDS = {"mathverse": "version"}
MATHVERSE_VERSIONS = (
    "Text Dominant",
    "Text Lite",
    "Vision Intensive",
    "Vision Dominant",
    "Vision Only",
    "Text Only",
)


def ordered_subsets(seen: set[str]) -> list[str]:
    """Subset names (MathVerse versions) in the published order, unknown ones after, by name."""
    known = [v for v in MATHVERSE_VERSIONS if v in seen]
    return known + sorted(seen - set(known))

# Per-benchmark breakdowns saved in scores.json (metadata fields).
BREAKDOWN_FIELDS: dict[str, tuple[str, ...]] = {
    "mathvista": ("question_type", "answer_type", "category", "context", "grade"),
    "mathverse": ("version", "subject"),
    "mathvision": ("subject", "level"),
    "mathvl": ("subject",),
    "jsonl": ("source",),
}
_DATA_SUFFIXES = (".parquet", ".jsonl", ".json")  # preference order when a folder holds several


@dataclass(frozen=True, eq=False)
class EvalItem:
    """One benchmark problem as shown to the model, with what scoring needs."""

    id: str
    question: str  # the text shown to the model (options included for multiple choice)
    images: tuple[str, ...]  # absolute paths
    answer: str  # the reference as published (MathVista: the option text for multiple choice)
    kind: Literal["choice", "free"]
    options: tuple[str, ...] = ()  # option texts, index 0 = A; empty when drawn in the image
    answer_letter: str | None = None  # the correct option's letter (choice items)
    metadata: dict[str, Any] = field(default_factory=dict)
    format: str = "jsonl"  # the benchmark layout it came from; picks the scoring rules

    def to_problem(self) -> Problem:
        """The Problem the generator sends (the student prompt wraps `question`)."""
        return Problem(id=self.id, question=self.question, images=self.images, answer=self.answer)


# ---------------------------------------------------------------------------------------------
# Files and records


@dataclass(frozen=True)
class _Record:
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


def read_benchmark_file(path: Path) -> Iterator[_Record]:
    """Records of one JSON (list, or object keyed by id), JSONL or parquet file."""
    if path.suffix == ".parquet":
        yield from _parquet_records(path)
    elif path.suffix == ".jsonl":
        yield from _jsonl_records(path)
    else:
        yield from _json_records(path)


def _parquet_records(path: Path) -> Iterator[_Record]:
    import pyarrow.parquet as pq

    try:
        rows = pq.read_table(path).to_pylist()
    except Exception as exc:  # pyarrow raises ArrowInvalid, OSError, ... on a bad file
        raise DataError(f"{path}: not a readable parquet file ({type(exc).__name__}: {exc})") from None
    for i, row in enumerate(rows):
        yield _Record(f"{path}: row {i}", row, path)


def _jsonl_records(path: Path) -> Iterator[_Record]:
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
        yield _Record(f"{path}:{lineno}", obj, path)


def _json_records(path: Path) -> Iterator[_Record]:
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
        yield _Record(where, value, path, key)


# ---------------------------------------------------------------------------------------------
# Field access with errors that name file, record and field


def _where(rec: _Record, rid: str | None) -> str:
    return rec.where if rid is None or rec.key is not None else f"{rec.where} (id {rid!r})"


def _text(rec: _Record, name: str, rid: str | None = None, *, required: bool = True, allow_empty: bool = False) -> str:
    """A string field (numbers are accepted as their text: datasets store 7 and "7" alike)."""
    if name not in rec.data or rec.data[name] is None:
        if required:
            raise DataError(f"{_where(rec, rid)}: missing field {name!r}")
        return ""
    value = rec.data[name]
    if isinstance(value, bool) or not isinstance(value, str | int | float):
        raise DataError(f"{_where(rec, rid)}: field {name!r}: expected text, got {type(value).__name__}")
    if isinstance(value, float) and value.is_integer():
        value = int(value)
    text = str(value)
    if required and not allow_empty and not text.strip():
        raise DataError(f"{_where(rec, rid)}: field {name!r} is empty")
    return text


def _str_list(rec: _Record, names: tuple[str, ...], rid: str) -> list[str]:
    for name in names:
        value = rec.data.get(name)
        if value is None:
            continue
        if not isinstance(value, list | tuple) or not all(isinstance(v, str | int | float) for v in value):
            raise DataError(f"{_where(rec, rid)}: field {name!r}: expected a list of option texts")
        return [str(v) for v in value]
    return []


def _optional_number(value: Any) -> float | None:
    if value is None or isinstance(value, bool):
        return None
    try:
        number = float(value)
    except (TypeError, ValueError):
        return None
    return None if math.isnan(number) else number


# ---------------------------------------------------------------------------------------------
# Images


class _Images:
    """Turns image fields (paths, image structs with bytes, lists of either) into absolute paths."""

    def __init__(self, cache_dir: Path, roots: list[Path], materialize: bool) -> None:
        self.cache_dir = cache_dir
        self.roots = list(dict.fromkeys(r.resolve() for r in roots))
        self.materialize = materialize

    def collect(self, rec: _Record, rid: str, *names: str) -> tuple[str, ...]:
        """Images of the first of `names` that holds any (e.g. decoded_image before image)."""
        for name in names:
            found = self._value(rec.data.get(name), rec, rid, name)
            if found:
                return tuple(found)
        return ()

    def _value(self, value: Any, rec: _Record, rid: str, name: str) -> list[str]:
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
        raise DataError(f"{_where(rec, rid)}: field {name!r}: expected an image path or image struct")

    def _path(self, ref: str, rec: _Record, rid: str) -> str:
        path = Path(ref).expanduser()
        candidates = [path] if path.is_absolute() else [root / path for root in self.roots]
        for candidate in candidates:
            if candidate.is_file():
                return str(candidate.resolve())
        looked = ", ".join(str(r) for r in self.roots) if not path.is_absolute() else "absolute path"
        raise DataError(f"{_where(rec, rid)}: image not found: {ref} (looked under {looked}; set image_root)")

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


# ---------------------------------------------------------------------------------------------
# Loading


def load_benchmark(spec: BenchmarkSpec, image_cache: Path, *, materialize: bool = True) -> list[EvalItem]:
    """All items of one configured benchmark (the first `spec.limit`), validated.

    `image_cache` receives embedded images; with `materialize=False` (dry runs) their paths are
    computed but nothing is written.
    """
    if spec.format == "jsonl":
        items = _load_problems(spec)
    else:
        loader = _LOADERS[spec.format]
        items = []
        for file in data_files(spec.path, spec.split, DEFAULT_SPLITS.get(spec.format)):
            roots = [spec.image_root] if spec.image_root else [file.parent, file.parent.parent, spec.path]
            images = _Images(image_cache, [r for r in roots if r.is_dir()], materialize)
            for index, rec in enumerate(read_benchmark_file(file), start=len(items)):
                items.append(loader(rec, images, index))
                if spec.limit and len(items) >= spec.limit:
                    break
            if spec.limit and len(items) >= spec.limit:
                break
    if not items:
        raise DataError(f"{spec.path}: no records in benchmark {spec.name!r}")
    seen: dict[str, int] = {}
    for i, item in enumerate(items):
        if item.id in seen:
            raise DataError(f"{spec.path}: duplicate id {item.id!r} (records {seen[item.id]} and {i})")
        seen[item.id] = i
    return items[: spec.limit] if spec.limit else items


def _options_block(options: list[str]) -> str:
    """MathVista's "Choices:" block; options drawn in the image are listed by letter only."""
    letters = LETTERS[: len(options)]
    if [o.strip() for o in options] == list(letters):
        return "Choices: " + " ".join(f"({c})" for c in letters)
    return "Choices:\n" + "\n".join(f"({c}) {opt}" for c, opt in zip(letters, options, strict=False))


def _letter_for(answer: str, options: list[str]) -> str | None:
    """The option letter of a reference given as a letter ("B", "(B)") or as one option's text."""
    ref = answer.strip()
    count = len(options) or 5  # options drawn in the image: MathVision has five, A-E
    match = re.fullmatch(r"\(?\s*([A-Ha-h])\s*\)?\.?", ref)
    if match and LETTERS.index(match.group(1).upper()) < count:
        return match.group(1).upper()
    exact = [i for i, opt in enumerate(options) if opt.strip() == ref]
    if len(exact) == 1:
        return LETTERS[exact[0]]
    loose = [i for i, opt in enumerate(options) if normalize_answer(opt) == normalize_answer(ref)]
    return LETTERS[loose[0]] if len(loose) == 1 else None


_MATHVISTA_HINTS = {
    "multi_choice": "Please answer the question and provide the correct option letter, e.g., A, B, C, D, at the end.",
    "integer": "Please answer the question requiring an integer answer and provide the final value, "
    "e.g., 1, 2, 3, at the end.",
    "list": "Please answer the question requiring a Python list as an answer and provide the final list, "
    "e.g., [1, 2, 3], [1.2, 1.3, 1.4], at the end.",
}


def _mathvista_hint(question_type: str, answer_type: str, precision: float | None) -> str:
    """The hint line MathVista's own query puts first (it fixes precision and list format)."""
    if question_type == "multi_choice":
        return _MATHVISTA_HINTS["multi_choice"]
    if answer_type == "float":
        places = int(precision) if precision is not None else 1
        examples = {1: "1.2, 1.3, 1.4", 2: "1.23, 1.34, 1.45"}.get(places, "1.234, 1.345, 1.456")
        words = {1: "one decimal place", 2: "two decimal places"}.get(places, f"{places} decimal places")
        return (
            f"Please answer the question requiring a floating-point number with {words} and provide the "
            f"final value, e.g., {examples}, at the end."
        )
    return _MATHVISTA_HINTS.get(answer_type, "Please answer the question and provide the final value at the end.")


def _record_id(rec: _Record, field: str) -> str:
    """The record's id field, else its key in a JSON object keyed by id."""
    rid = _text(rec, field, required=False) or rec.key
    if not rid:
        raise DataError(f"{rec.where}: missing field {field!r}")
    return rid


def _item(
    fmt: str, rid: str, question: str, images: tuple[str, ...], answer: str, letter: str | None,
    options: list[str], meta: dict[str, Any],
) -> EvalItem:
    """With an answer letter the item is multiple choice over `options` (none listed: drawn in the image)."""
    return EvalItem(id=rid, question=question, images=images, answer=answer, kind="choice" if letter else "free",
                    options=tuple(options) if letter else (), answer_letter=letter, metadata=meta, format=fmt)


def _load_mathvista(rec: _Record, images: _Images, index: int) -> EvalItem:
    rid = _record_id(rec, "pid")
    question = _text(rec, "question", rid)
    answer = _text(rec, "answer", rid)
    question_type = _text(rec, "question_type", rid)
    answer_type = _text(rec, "answer_type", rid)
    if question_type not in ("multi_choice", "free_form"):
        raise DataError(f"{_where(rec, rid)}: field 'question_type': expected multi_choice or free_form")
    choices = _str_list(rec, ("choices",), rid)
    unit = _text(rec, "unit", rid, required=False).strip() or None
    precision = _optional_number(rec.data.get("precision"))
    meta: dict[str, Any] = {"question_type": question_type, "answer_type": answer_type}
    meta.update({"unit": unit, "precision": int(precision) if precision is not None else None})
    extra = rec.data.get("metadata")
    if isinstance(extra, dict):
        meta.update({k: v for k, v in extra.items() if k not in meta})

    shown = f"Question: {question}" + (f" (Unit: {unit})" if unit else "")
    parts = [f"Hint: {_mathvista_hint(question_type, answer_type, precision)}", shown]
    letter = None
    if question_type == "multi_choice":
        if not choices:
            raise DataError(f"{_where(rec, rid)}: multi_choice record without 'choices'")
        letter = _letter_for(answer, choices)
        if letter is None:
            raise DataError(f"{_where(rec, rid)}: field 'answer': {answer!r} is not one of the choices")
        parts.append(_options_block(choices))
    return _item("mathvista", rid, "\n".join(parts), images.collect(rec, rid, "decoded_image", "image"), answer,
                 letter, choices, meta)


def _load_mathverse(rec: _Record, images: _Images, index: int) -> EvalItem:
    rid = _record_id(rec, "sample_index")
    question = _text(rec, "question", rid, allow_empty=True)  # empty for Vision Only
    answer = _text(rec, "answer", rid)
    question_type = _text(rec, "question_type", rid)
    version = _text(rec, "problem_version", rid)
    meta: dict[str, Any] = {
        "version": version,
        "question_type": question_type,
        "problem_index": _text(rec, "problem_index", rid, required=False) or None,
    }
    extra = rec.data.get("metadata")
    if isinstance(extra, dict):
        meta.update({k: v for k, v in extra.items() if k in ("subject", "subfield", "source", "split")})

    is_choice = question_type.replace("_", "-") == "multi-choice"
    options = (is_choice_question(question) or []) if is_choice else []
    letter = _letter_for(answer, options) if is_choice else None
    if question.strip():
        shown = question
    else:  # Vision Only: the whole question is in the diagram (MathVerse's own query says so)
        shown = "According to the question shown in the image, answer the question" + (
            " and provide the correct option letter." if is_choice else "."
        )
    # A choice answer that is no letter is compared as text.
    return _item("mathverse", rid, shown, images.collect(rec, rid, "image", "decoded_image"), answer, letter, options,
                 meta)


def _load_mathvision(rec: _Record, images: _Images, index: int) -> EvalItem:
    rid = _record_id(rec, "id")
    question = _text(rec, "question", rid)
    answer = _text(rec, "answer", rid)
    options = _str_list(rec, ("options",), rid)
    meta: dict[str, Any] = {"subject": rec.data.get("subject"), "level": rec.data.get("level")}
    # Multiple choice: listed options, or (no options) a letter answer whose options are drawn in the image.
    letter = _letter_for(answer, options) if options or re.fullmatch(r"[A-E]", answer.strip()) else None
    if options and letter is None:
        raise DataError(f"{_where(rec, rid)}: field 'answer': {answer!r} is neither an option letter nor an option")
    shown = f"{question}\n\n{_options_block(options)}" if options else question
    return _item("mathvision", rid, shown, images.collect(rec, rid, "decoded_image", "image"), answer, letter, options,
                 meta)


_MATHVL_KNOWN = {"id", "question", "answer", "image", "images", "options", "choices", "solution"}


def _load_mathvl(rec: _Record, images: _Images, index: int) -> EvalItem:
    rid = _text(rec, "id", required=False) or rec.key or str(index)
    question = _text(rec, "question", rid)
    answer = _text(rec, "answer", rid)
    options = _str_list(rec, ("options", "choices"), rid)
    inline = is_choice_question(question) if not options else None
    listed = options or inline or []
    letter = _letter_for(answer, listed) if listed else None
    if options and letter is None:
        raise DataError(f"{_where(rec, rid)}: field 'answer': {answer!r} is neither an option letter nor an option")
    shown = f"{question}\n\n{_options_block(options)}" if options else question
    meta = {
        k: v
        for k, v in rec.data.items()
        if k not in _MATHVL_KNOWN and isinstance(v, str | int | float | bool | type(None))
    }
    return _item("mathvl", rid, shown, images.collect(rec, rid, "images", "image"), answer, letter, listed, meta)


def _load_problems(spec: BenchmarkSpec) -> list[EvalItem]:
    """The project's Problem schema; options are read from the question text, as in training."""
    if spec.path.is_dir():
        raise DataError(f"{spec.path}: format 'jsonl' needs the JSONL file itself, not a folder")
    items = []
    for problem in read_problems(spec.path, spec.image_root):
        options = is_choice_question(problem.question) or []
        letter = _letter_for(problem.answer, options) if options else None
        items.append(
            EvalItem(
                id=problem.id,
                question=problem.question,
                images=problem.images,
                answer=problem.answer,
                kind="choice" if letter else "free",
                options=tuple(options) if letter else (),
                answer_letter=letter,
                metadata={"source": problem.source} if problem.source else {},
            )
        )
        if spec.limit and len(items) >= spec.limit:
            break
    return items


_LOADERS: dict[str, Callable[[_Record, _Images, int], EvalItem]] = {
    "mathvista": _load_mathvista,
    "mathverse": _load_mathverse,
    "mathvision": _load_mathvision,
    "mathvl": _load_mathvl,
}
