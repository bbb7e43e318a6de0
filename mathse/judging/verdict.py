"""The ORM's verdict on a reasoning path, and the ORM prompt/response contract.

Contract
--------
The ORM is shown ``ORM_SYSTEM_PROMPT`` plus ``build_orm_prompt(question, steps,
reference)``: the question (images are attached separately by the caller), the
reference answer if any, and the path as ``number_steps(steps)``.  It must reply
with one JSON object::

    {"correct": true|false, "error_step": <int or null>, "analysis": "<text>", "score": <0..1, optional>}

``error_step`` is 1-based into ``split_steps(path)`` (see ``mathse.judging.steps``) and
is null when the path is correct.  ``format_orm_response`` renders exactly this
object, so the ORM's SFT targets and ``parse_verdict`` agree.

Parsing policy (``parse_verdict`` never raises)
-----------------------------------------------
* JSON is preferred (fenced, single-quoted, trailing commas, Python literals
  and surrounding chatter are tolerated); missing fields are filled from tagged
  lines (``Correct: no``, ``Error step: 3``, ``正确：否``, ``错误步骤：第3步``,
  ``分析：...``, ``Score: 0.8``) and phrases ("Step 3 is the first error").
* No recognisable correctness -> ``Verdict(correct=None, parsed=False)``;
  such a verdict is never treated as correct anywhere.
* A named error step without a correctness label implies ``correct=False``.
  A score without a label implies ``correct = score >= 0.5``.
* Contradiction ``correct=true`` with an ``error_step`` is resolved
  conservatively: the judge located an error, so ``correct=False`` (the step
  is kept, and a note is appended to the analysis).  ``error_step`` 0 or -1
  next to ``correct=true`` is read as the common "no error" sentinel.
* ``error_step`` out of range (``< 1`` or ``> n_steps`` when ``n_steps`` is
  known) is *not* clamped, since clamping would invent an error location: it
  becomes None, correctness is kept, and a note is appended to the analysis.
* Scores outside [0, 1] are dropped (percentages like "83%" become 0.83).

Reading the fields out of the reply text is `mathse.judging.verdict_parsing`; the policy above,
which turns them into a `Verdict`, is `parse_verdict` here.
"""

from __future__ import annotations

import json
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field

from mathse.answers.extraction import RuleCheck
from mathse.judging.steps import number_steps
from mathse.judging.verdict_parsing import (
    bare_verdict,
    fields_from_json,
    fields_from_tags,
    free_text_analysis,
    step_from_phrases,
    to_bool,
    to_score,
    to_step,
)

__all__ = [
    "ORM_SYSTEM_PROMPT",
    "Verdict",
    "build_orm_prompt",
    "combine",
    "format_orm_response",
    "parse_verdict",
    "rule_verdict",
]

CombinePolicy = Literal["orm", "rule", "both", "either"]


class Verdict(BaseModel):
    """A judgement of one reasoning path (from the ORM, the rule checker, or both)."""

    model_config = ConfigDict(frozen=True)

    correct: bool | None = None  # None: unparseable/unknown, never counts as correct
    error_step: int | None = Field(default=None, ge=1)  # 1-based into split_steps(path)
    analysis: str = ""
    score: float | None = Field(default=None, ge=0.0, le=1.0)  # P(correct) if the judge gave one
    parsed: bool = False
    raw: str = ""
    source: str = "orm"

    @property
    def is_correct(self) -> bool:
        """Strictly True only for a parsed, positive verdict."""
        return self.correct is True


ORM_SYSTEM_PROMPT = """You are a meticulous grader of mathematical solutions (an outcome reward model).
You are given a math problem (possibly with images), optionally its reference answer, and a candidate \
solution split into numbered steps. Check every step: calculations, use of the figure or data, logic, \
and whether the final answer is right.

Reply with exactly one JSON object and nothing else:
{"correct": true or false, "error_step": <number of the first incorrect step, or null if correct>, \
"analysis": "<why the solution is correct, or what goes wrong in the first incorrect step and how to fix it>", \
"score": <your probability from 0 to 1 that the solution is correct (optional)>}

Rules: "correct" is true only if every step is valid and the final answer is right. If "correct" is \
false, "error_step" is the 1-based number of the FIRST step that contains an error (use null only if \
no single step can be blamed). If "correct" is true, "error_step" must be null."""


def build_orm_prompt(question: str, steps: list[str], reference_answer: str | None) -> str:
    """User message for the ORM: question, reference (if any), numbered steps, format reminder."""
    parts = [f"## Problem\n{question.strip()}"]
    if reference_answer is not None and str(reference_answer).strip():
        parts.append(f"## Reference answer\n{str(reference_answer).strip()}")
    parts.append(f"## Candidate solution ({len(steps)} steps)\n{number_steps(steps)}")
    parts.append(
        "## Your judgement\n"
        'Reply with one JSON object: {"correct": true|false, "error_step": <int from 1 to '
        f'{max(len(steps), 1)} or null>, "analysis": "<text>", "score": <0..1>}}'
    )
    return "\n\n".join(parts)


def format_orm_response(verdict: Verdict) -> str:
    """Render ``verdict`` in the ORM response contract (one JSON object; ORM SFT targets)."""
    if verdict.correct is None:
        raise ValueError("cannot format an unparseable verdict as an ORM target")
    payload: dict[str, Any] = {
        "correct": verdict.correct,
        "error_step": None if verdict.correct else verdict.error_step,
        "analysis": verdict.analysis,
    }
    if verdict.score is not None:
        payload["score"] = round(verdict.score, 4)
    return json.dumps(payload, ensure_ascii=False)


# --------------------------------------------------------------------------- parse_verdict


def _note(analysis: str, note: str) -> str:
    return f"{analysis} [{note}]" if analysis else f"[{note}]"


def parse_verdict(raw: str, n_steps: int | None = None) -> Verdict:
    """Parse an ORM reply into a Verdict; never raises, unparseable -> correct=None.

    See the module docstring for the policy on contradictions and out-of-range steps.
    """
    try:
        return _parse_verdict(raw if isinstance(raw, str) else str(raw), n_steps)
    except Exception:  # a parser bug must not crash a pipeline; unknown is the safe answer
        return Verdict(correct=None, parsed=False, raw=raw if isinstance(raw, str) else repr(raw))


def _parse_verdict(raw: str, n_steps: int | None) -> Verdict:
    text = raw.replace("\r\n", "\n")
    json_fields = fields_from_json(text)
    fields = dict(json_fields)
    for key, value in fields_from_tags(text).items():
        fields.setdefault(key, value)

    correct = to_bool(fields["correct"]) if "correct" in fields else None
    step_value = to_step(fields["error_step"]) if "error_step" in fields else None
    error_step = step_value if isinstance(step_value, int) else None
    if error_step is None and step_value != "none" and correct is not True:
        # Free-text phrases are only consulted when no explicit "correct" contradicts them.
        error_step = step_from_phrases(text)
    score = to_score(fields["score"]) if "score" in fields else None
    analysis_value = fields.get("analysis", "")
    analysis = analysis_value.strip() if isinstance(analysis_value, str) else json.dumps(analysis_value)

    if correct is None and not fields:
        correct = bare_verdict(text)
        if correct is not None:
            text_after = text.strip().split("\n", 1)
            text = text_after[1] if len(text_after) > 1 else ""  # the verdict word is no analysis
    if not analysis and "analysis" not in fields and not json_fields:
        analysis = free_text_analysis(text)

    if correct is True and error_step is not None and error_step <= 0:
        error_step = None  # 0 / -1: "no error" sentinel
    if correct is None and error_step is not None and error_step >= 1:
        correct = False  # naming the first faulty step is a judgement of incorrectness
    if correct is None and score is not None:
        correct = score >= 0.5
    if correct is True and error_step is not None:
        analysis = _note(analysis, f"judged correct but names error step {error_step}; treated as incorrect")
        correct = False
    if error_step is not None and (error_step < 1 or (n_steps is not None and error_step > n_steps)):
        bound = f"1..{n_steps}" if n_steps is not None else ">= 1"
        analysis = _note(analysis, f"error_step {error_step} out of range {bound}; dropped")
        error_step = None
    if correct is None:
        return Verdict(correct=None, error_step=None, analysis=analysis, score=score, parsed=False, raw=raw)
    if correct:
        error_step = None
    return Verdict(correct=correct, error_step=error_step, analysis=analysis, score=score, parsed=True, raw=raw)


# --------------------------------------------------------------------------- rule + combine


def rule_verdict(check: RuleCheck) -> Verdict:
    """The rule-based answer check as a Verdict (it never knows the faulty step)."""
    return Verdict(correct=check.correct, error_step=None, analysis=check.reason, parsed=True, source="rule")


def _apply_threshold(orm: Verdict, score_threshold: float | None) -> Verdict:
    """A positive ORM verdict whose score is below the threshold becomes negative."""
    if orm.correct is True and score_threshold is not None and orm.score is not None and orm.score < score_threshold:
        note = f"score {orm.score:.3g} below threshold {score_threshold:.3g}"
        return orm.model_copy(update={"correct": False, "analysis": _note(orm.analysis, note)})
    return orm


def combine(
    orm: Verdict | None,
    rule: Verdict | None,
    policy: CombinePolicy = "both",
    score_threshold: float | None = None,
) -> Verdict:
    """Merge ORM and rule verdicts under ``policy``.

    * ``orm`` / ``rule``: that verdict alone (missing -> unknown).
    * ``both``: correct only if both say correct; incorrect if either says incorrect; else unknown.
    * ``either``: correct if either says correct; incorrect if one says incorrect and none correct.
    An ORM score below ``score_threshold`` turns its positive verdict negative first.
    Unparseable/missing verdicts (correct=None) never count as correct.  ``error_step``,
    ``analysis``, ``score`` and ``raw`` come from the ORM when it parsed; the rule's reason is
    added to the analysis when the ORM is absent or disagrees with it.
    """
    if policy not in ("orm", "rule", "both", "either"):
        raise ValueError(f"unknown combine policy: {policy!r}")
    orm = _apply_threshold(orm, score_threshold) if orm is not None else None
    orm_c = orm.correct if orm is not None else None
    rule_c = rule.correct if rule is not None else None

    if policy == "orm":
        votes = [orm_c]
    elif policy == "rule":
        votes = [rule_c]
    else:
        votes = [orm_c, rule_c]
    if policy == "either":
        correct = True if True in votes else (False if False in votes else None)
    else:
        correct = False if False in votes else (True if votes and all(v is True for v in votes) else None)

    orm_used = orm is not None and orm.parsed and policy != "rule"
    rule_used = rule is not None and policy != "orm"
    analysis = orm.analysis if orm_used and orm is not None else ""
    if rule_used and rule is not None and rule.analysis and (not orm_used or rule_c != orm_c):
        analysis = f"{analysis}\nRule check: {rule.analysis}".strip()
    error_step = orm.error_step if orm_used and orm is not None and correct is False else None
    return Verdict(
        correct=correct,
        error_step=error_step,
        analysis=analysis,
        score=orm.score if orm is not None and policy != "rule" else None,
        parsed=correct is not None,
        raw=orm.raw if orm is not None else "",
        source=policy,
    )
