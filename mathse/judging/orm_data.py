"""The ORM's data: labelled reasoning paths, the teacher's annotation of wrong ones, balance,
held-out split, and the metrics of a trained ORM on the held-out paths.

A labelled path (one JSONL line of ``orm/data/train.jsonl``, ``heldout.jsonl`` or a hand-made
``orm.train_file``)::

    {"id": "p1", "question": "...", "images": ["img/p1.png"], "answer": "12" (optional),
     "path": "Step 1: ...\\nStep 2: ...", "correct": false, "error_step": 2, "analysis": "..."}

``error_step`` is 1-based into ``split_steps(path)`` (mathse.judging.steps), as in the verdict contract
of mathse.judging.verdict. Everything here is pure (no I/O beyond reading a file): `--stage orm` drives it.
"""

from __future__ import annotations

import hashlib
import math
import random
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import Any

from pydantic import Field, StrictBool

from mathse.judging.steps import number_steps, split_steps
from mathse.judging.verdict import ORM_SYSTEM_PROMPT, Verdict, build_orm_prompt, format_orm_response, parse_verdict
from mathse.model.prompts import fill_template
from mathse.run.config import OrmDataConfig
from mathse.run.records import ImageRecord, Problem, SftExample, read_records

__all__ = [
    "ANNOTATOR_SYSTEM_PROMPT",
    "REASK_ANNOTATION",
    "REASK_CHECK",
    "LabelledPath",
    "annotation_prompt",
    "balance",
    "check_prompt",
    "class_counts",
    "heldout_ids",
    "orm_metrics",
    "read_labelled_paths",
    "valid_annotation",
    "valid_check",
]

ANNOTATOR_SYSTEM_PROMPT = (
    "You are an expert mathematics teacher who grades students' step-by-step solutions and pinpoints "
    "the first step where a solution goes wrong."
)
REASK_ANNOTATION = (
    "That reply cannot be used: it must be one JSON object whose \"error_step\" is a step number from 1 to "
    "{n_steps} (the first incorrect step) and whose \"analysis\" explains the error. Reply again with only "
    'the JSON object: {{"correct": false, "error_step": <1..{n_steps}>, "analysis": "<text>"}}'
)

REASK_CHECK = (
    "That reply cannot be used: it must be one JSON object, either {{\"correct\": true, \"error_step\": null, "
    "\"analysis\": \"<text>\"}} or {{\"correct\": false, \"error_step\": <1..{n_steps}>, \"analysis\": \"<text>\"}}. "
    "Reply again with only the JSON object."
)


class LabelledPath(ImageRecord):
    """One labelled reasoning path: the ORM's training example."""

    question: str = Field(min_length=1)
    answer: str | None = None
    path: str = Field(min_length=1)
    correct: StrictBool  # "false" or 0 would silently flip labels: only JSON booleans
    error_step: int | None = Field(default=None, ge=1)
    analysis: str

    @property
    def steps(self) -> list[str]:
        return split_steps(self.path)

    def verdict(self) -> Verdict:
        return Verdict(correct=self.correct, error_step=self.error_step, analysis=self.analysis, parsed=True)

    def problem(self) -> Problem:
        return Problem(id=self.id, question=self.question, images=self.images, answer=self.answer or "")

    def example(self, targets: str = "diagnostic") -> SftExample:
        """The SFT example in the ORM prompt/response contract (see mathse.judging.verdict); `targets`
        "binary": the verdict alone, no first wrong step and no analysis (the paper's Table 5 ablation)."""
        verdict = self.verdict()
        if targets == "binary":
            verdict = Verdict(correct=self.correct, parsed=True)
        return SftExample(
            prompt=build_orm_prompt(self.question, self.steps, self.answer),
            response=format_orm_response(verdict),
            images=self.images,
            system=ORM_SYSTEM_PROMPT,
            id=self.id,
        )


def read_labelled_paths(path: Path, image_root: Path | None = None) -> list[LabelledPath]:
    """Read and validate every line of a labelled-paths file; DataError names `file:line` on the first bad one.

    Several labelled paths may share a problem id. Image paths are made absolute: relative ones
    resolve against `image_root`, else the file's folder.
    """
    return read_records(
        path, LabelledPath, image_root, unique_ids=False, check=_label_problem, what="labelled paths"
    )


def _label_problem(row: LabelledPath) -> str | None:
    """Why a row's label is inconsistent with its path, or None."""
    if row.correct and row.error_step is not None:
        return f"error_step: must be null when correct is true (got {row.error_step})"
    n_steps = len(row.steps)
    if row.error_step is not None and row.error_step > n_steps:
        return f"error_step: {row.error_step} is beyond the path's {n_steps} steps"
    return None


def class_counts(rows: Iterable[LabelledPath]) -> dict[str, int]:
    rows = list(rows)
    correct = sum(1 for r in rows if r.correct)
    located = sum(1 for r in rows if not r.correct and r.error_step is not None)
    return {"rows": len(rows), "correct": correct, "incorrect": len(rows) - correct, "error_step_known": located}


# -- the teacher's annotation of an incorrect path -----------------------------------------------


def annotation_prompt(data: OrmDataConfig, problem: Problem, steps: list[str]) -> str:
    """The teacher's user text for an incorrect path (`orm.data.annotate_prompt`, steps numbered)."""
    return _path_prompt(data.annotate_prompt, "orm.data.annotate_prompt", problem, steps)


def check_prompt(data: OrmDataConfig, problem: Problem, steps: list[str]) -> str:
    """The teacher's user text for a right-answer path (`orm.data.verify_prompt`, steps numbered)."""
    return _path_prompt(data.verify_prompt, "orm.data.verify_prompt", problem, steps)


def _path_prompt(template: str, key: str, problem: Problem, steps: list[str]) -> str:
    return fill_template(template, key, question=problem.question, answer=problem.answer,
                         steps=number_steps(steps), n_steps=str(len(steps)))


def valid_check(text: str, n_steps: int) -> Verdict | None:
    """The teacher's check of a right-answer path when usable: correct, or incorrect naming a step in range."""
    verdict = parse_verdict(text, n_steps)
    if verdict.correct is True:
        return verdict
    return valid_annotation(text, n_steps)


def valid_annotation(text: str, n_steps: int) -> Verdict | None:
    """The teacher's annotation when usable: an incorrect verdict naming a step in 1..n_steps.

    parse_verdict drops an out-of-range step (it never clamps), so such a reply is unusable too.
    """
    verdict = parse_verdict(text, n_steps)
    if verdict.correct is not False or verdict.error_step is None or not verdict.analysis.strip():
        return None
    return verdict


# -- balance and held-out split ------------------------------------------------------------------


def balance(
    rows: Sequence[LabelledPath], correct_per_incorrect: float, max_incorrect: int | None, seed: int
) -> list[LabelledPath]:
    """Keep `correct_per_incorrect` correct paths per incorrect one, cutting the larger class.

    The cut is a seeded shuffle (the same rows every run); the kept rows keep their input order.
    """
    correct = [i for i, r in enumerate(rows) if r.correct]
    incorrect = [i for i, r in enumerate(rows) if not r.correct]
    rng = random.Random(f"{seed}:orm-balance")
    rng.shuffle(correct)
    rng.shuffle(incorrect)
    if max_incorrect is not None:
        incorrect = incorrect[:max_incorrect]
    want_correct = math.floor(len(incorrect) * correct_per_incorrect + 1e-9)
    if len(correct) > want_correct:
        correct = correct[:want_correct]
    else:  # too few correct paths: fewer incorrect ones, so the ratio holds
        incorrect = incorrect[: math.floor(len(correct) / correct_per_incorrect + 1e-9)]
    keep = set(correct) | set(incorrect)
    return [r for i, r in enumerate(rows) if i in keep]


def heldout_ids(problem_ids: Iterable[str], fraction: float, seed: int) -> set[str]:
    """The problems held out: ceil(fraction * n) of them, ranked by a seeded hash of the id.

    Split by problem, not by path, so no held-out problem is seen in training; the choice depends
    only on the ids and the seed, never on the order or on which other problems exist.
    """
    ids = sorted(set(problem_ids))
    if fraction <= 0 or not ids:
        return set()
    n = min(len(ids) - 1, math.ceil(fraction * len(ids))) if len(ids) > 1 else 0
    ranked = sorted(ids, key=lambda i: hashlib.sha256(f"{seed}:{i}".encode()).hexdigest())
    return set(ranked[:n])


# -- metrics of a trained ORM --------------------------------------------------------------------


def orm_metrics(pairs: Iterable[tuple[LabelledPath, dict[str, Any] | None]]) -> dict[str, Any]:
    """Accuracy of the ORM's verdicts against the labels (the paper's Table 5 numbers).

    `pairs`: (label, the journaled ORM verdict `{"correct", "error_step", "parsed", ...}` or None
    when it was never answered). An unparseable verdict counts as wrong in every accuracy and in
    `unparseable_rate`; `error_step_exact` is over the incorrect paths whose label names a step.
    """
    n = correct_n = incorrect_n = hits = hits_c = hits_i = unparseable = located = step_hits = 0
    for label, orm in pairs:
        n += 1
        parsed = bool(orm) and bool(orm.get("parsed")) and orm.get("correct") is not None
        unparseable += not parsed
        right = parsed and orm["correct"] is label.correct  # type: ignore[index]
        hits += right
        if label.correct:
            correct_n += 1
            hits_c += right
        else:
            incorrect_n += 1
            hits_i += right
            if label.error_step is not None:
                located += 1
                step_hits += parsed and orm.get("correct") is False and orm.get("error_step") == label.error_step  # type: ignore[union-attr]

    def rate(num: int, den: int) -> float | None:
        return round(num / den, 4) if den else None

    return {
        "paths": n,
        "correct_paths": correct_n,
        "incorrect_paths": incorrect_n,
        "accuracy": rate(hits, n),
        "accuracy_on_correct": rate(hits_c, correct_n),
        "accuracy_on_incorrect": rate(hits_i, incorrect_n),
        "error_step_exact": rate(step_hits, located),
        "unparseable_rate": rate(unparseable, n),
        "unparseable": unparseable,
    }
