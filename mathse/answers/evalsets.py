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
Finding, reading and validating the files is `mathse.answers.benchmark_files`; this module maps
each layout's records onto `EvalItem`s.
"""

from __future__ import annotations

import re
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

from mathse.answers.benchmark_files import (
    ImageResolver,
    Record,
    data_files,
    optional_number,
    read_benchmark_file,
    record_where,
    str_list_field,
    text_field,
)
from mathse.answers.equivalence import normalize_answer
from mathse.answers.extraction import is_choice_question
from mathse.run.config import BenchmarkSpec
from mathse.run.records import DataError, Problem, read_problems

__all__ = [
    "BREAKDOWN_FIELDS",
    "DEFAULT_SPLITS",
    "LETTERS",
    "MATHVERSE_VERSIONS",
    "SUBSET_FIELDS",
    "EvalItem",
    "load_benchmark",
    "ordered_subsets",
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
            images = ImageResolver(image_cache, [r for r in roots if r.is_dir()], materialize)
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
    # The option text first: MathVista's choices may themselves be letters (pid 849: "(c)", "(d)", "(a)",
    # "(b)", "(e)" with answer "(b)", the fourth choice, D).
    exact = [i for i, opt in enumerate(options) if opt.strip() == ref]
    if len(exact) == 1:
        return LETTERS[exact[0]]
    match = re.fullmatch(r"\(?\s*([A-Ha-h])\s*\)?\.?", ref)
    if match and LETTERS.index(match.group(1).upper()) < count:
        return match.group(1).upper()
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


def _record_id(rec: Record, field: str) -> str:
    """The record's id field, else its key in a JSON object keyed by id."""
    rid = text_field(rec, field, required=False) or rec.key
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


def _load_mathvista(rec: Record, images: ImageResolver, index: int) -> EvalItem:
    rid = _record_id(rec, "pid")
    question = text_field(rec, "question", rid)
    answer = text_field(rec, "answer", rid)
    question_type = text_field(rec, "question_type", rid)
    answer_type = text_field(rec, "answer_type", rid)
    if question_type not in ("multi_choice", "free_form"):
        raise DataError(f"{record_where(rec, rid)}: field 'question_type': expected multi_choice or free_form")
    choices = str_list_field(rec, ("choices",), rid)
    unit = text_field(rec, "unit", rid, required=False).strip() or None
    precision = optional_number(rec.data.get("precision"))
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
            raise DataError(f"{record_where(rec, rid)}: multi_choice record without 'choices'")
        letter = _letter_for(answer, choices)
        if letter is None:
            raise DataError(f"{record_where(rec, rid)}: field 'answer': {answer!r} is not one of the choices")
        parts.append(_options_block(choices))
    return _item("mathvista", rid, "\n".join(parts), images.collect(rec, rid, "decoded_image", "image"), answer,
                 letter, choices, meta)


def _load_mathverse(rec: Record, images: ImageResolver, index: int) -> EvalItem:
    rid = _record_id(rec, "sample_index")
    question = text_field(rec, "question", rid, allow_empty=True)  # empty for Vision Only
    answer = text_field(rec, "answer", rid)
    question_type = text_field(rec, "question_type", rid)
    version = text_field(rec, "problem_version", rid)
    meta: dict[str, Any] = {
        "version": version,
        "question_type": question_type,
        "problem_index": text_field(rec, "problem_index", rid, required=False) or None,
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


def _load_mathvision(rec: Record, images: ImageResolver, index: int) -> EvalItem:
    rid = _record_id(rec, "id")
    question = text_field(rec, "question", rid)
    answer = text_field(rec, "answer", rid)
    options = str_list_field(rec, ("options",), rid)
    meta: dict[str, Any] = {"subject": rec.data.get("subject"), "level": rec.data.get("level")}
    # Multiple choice: listed options, or (no options) a letter answer whose options are drawn in the image.
    letter = _letter_for(answer, options) if options or re.fullmatch(r"[A-E]", answer.strip()) else None
    if options and letter is None:
        raise DataError(
            f"{record_where(rec, rid)}: field 'answer': {answer!r} is neither an option letter nor an option"
        )
    shown = f"{question}\n\n{_options_block(options)}" if options else question
    return _item("mathvision", rid, shown, images.collect(rec, rid, "decoded_image", "image"), answer, letter, options,
                 meta)


_MATHVL_KNOWN = {"id", "question", "answer", "image", "images", "options", "choices", "solution"}


def _load_mathvl(rec: Record, images: ImageResolver, index: int) -> EvalItem:
    rid = text_field(rec, "id", required=False) or rec.key or str(index)
    question = text_field(rec, "question", rid)
    answer = text_field(rec, "answer", rid)
    options = str_list_field(rec, ("options", "choices"), rid)
    inline = is_choice_question(question) if not options else None
    listed = options or inline or []
    letter = _letter_for(answer, listed) if listed else None
    if options and letter is None:
        raise DataError(
            f"{record_where(rec, rid)}: field 'answer': {answer!r} is neither an option letter nor an option"
        )
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


_LOADERS: dict[str, Callable[[Record, ImageResolver, int], EvalItem]] = {
    "mathvista": _load_mathvista,
    "mathverse": _load_mathverse,
    "mathvision": _load_mathvision,
    "mathvl": _load_mathvl,
}
