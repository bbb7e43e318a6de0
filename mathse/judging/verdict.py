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
"""

from __future__ import annotations

import ast
import json
import re
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field

from mathse.answers.extraction import RuleCheck
from mathse.judging.steps import number_steps

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


# --------------------------------------------------------------------------- value parsing

# Longest / negated forms first so "incorrect" never reads as "correct".
_BOOL_WORDS: list[tuple[str, bool]] = [
    (r"no\s+(?:errors?|mistakes?|issues?)", True),
    (r"(?:not|isn'?t|is\s+not)\s+(?:entirely\s+|fully\s+)?(?:correct|right|valid|true)", False),
    (r"incorrect", False),
    (r"in-correct", False),
    (r"wrong", False),
    (r"false", False),
    (r"invalid", False),
    (r"fail(?:ed|s)?", False),
    (r"no", False),
    (r"correct", True),
    (r"right", True),
    (r"true", True),
    (r"valid", True),
    (r"pass(?:ed|es)?", True),
    (r"yes", True),
    (r"没有错误|无错误|没有错|无误", True),
    (r"不正确|错误|不对|有误|×|✗|✘", False),
    (r"正确|√|✓|✔", True),
]
# One-character Chinese answers are only trusted as (nearly) the whole value: "这是错误的" has "是".
_WEAK_WORDS: list[tuple[str, bool]] = [(r"否|错|不", False), (r"是|对", True)]


def _alternation(words: list[tuple[str, bool]]) -> re.Pattern[str]:
    return re.compile(
        "|".join(
            f"(?P<w{i}>{pat})" if not pat[0].isascii() or not pat[0].isalpha() else f"(?P<w{i}>\\b(?:{pat})\\b)"
            for i, (pat, _) in enumerate(words)
        ),
        re.IGNORECASE,
    )


_BOOL_RE = _alternation(_BOOL_WORDS)
_WEAK_RE = _alternation(_WEAK_WORDS)


def _to_bool(value: Any) -> bool | None:
    """Correctness from a JSON value or label text (first correctness word wins)."""
    if isinstance(value, bool):
        return value
    if isinstance(value, (int, float)) and value in (0, 1):
        return bool(value)
    if not isinstance(value, str):
        return None
    for pattern, words, limit in ((_BOOL_RE, _BOOL_WORDS, 80), (_WEAK_RE, _WEAK_WORDS, 3)):
        short = value.strip().strip("。.!！*").strip()[:80]
        if len(short) > limit:
            continue
        match = pattern.search(short)
        if match is not None:
            index = int(next(k for k, v in match.groupdict().items() if v is not None)[1:])
            return words[index][1]
    return None


_NONE_WORDS = re.compile(r"^\s*(?:(?:none|null|nil|n/?a|no(?:ne)?\s+errors?)\b|-+\s*$|无|没有|不存在)", re.IGNORECASE)
_CN_NUM = {"一": 1, "二": 2, "三": 3, "四": 4, "五": 5, "六": 6, "七": 7, "八": 8, "九": 9, "十": 10}


def _to_step(value: Any) -> int | Literal["none"] | None:
    """Step number from a JSON value or label text; "none" when explicitly no step."""
    if value is None:
        return "none"
    if isinstance(value, bool):
        return None
    if isinstance(value, int):
        return value
    if isinstance(value, float) and value.is_integer():
        return int(value)
    if not isinstance(value, str):
        return None
    if _NONE_WORDS.match(value):
        return "none"
    match = re.search(r"-?\d+", value[:40])
    if match:
        return int(match.group(0))
    match = re.search(r"第\s*([一二三四五六七八九十])\s*步", value)
    if match:
        return _CN_NUM[match.group(1)]
    return None


def _to_score(value: Any) -> float | None:
    if isinstance(value, bool):
        return None
    if isinstance(value, str):
        match = re.search(r"(-?\d*\.?\d+)\s*(%?)", value)
        if not match:
            return None
        number = float(match.group(1)) / (100 if match.group(2) else 1)
    elif isinstance(value, (int, float)):
        number = float(value)
    else:
        return None
    return number if 0.0 <= number <= 1.0 else None


# --------------------------------------------------------------------------- JSON

_KEY_ALIASES = {
    "correct": "correct",
    "is_correct": "correct",
    "iscorrect": "correct",
    "correctness": "correct",
    "verdict": "correct",
    "judgement": "correct",
    "judgment": "correct",
    "label": "correct",
    "result": "correct",
    "conclusion": "correct",
    "正确": "correct",
    "是否正确": "correct",
    "结论": "correct",
    "error_step": "error_step",
    "errorstep": "error_step",
    "first_error_step": "error_step",
    "first_error": "error_step",
    "first_incorrect_step": "error_step",
    "incorrect_step": "error_step",
    "wrong_step": "error_step",
    "错误步骤": "error_step",
    "analysis": "analysis",
    "explanation": "analysis",
    "reason": "analysis",
    "reasoning": "analysis",
    "rationale": "analysis",
    "critique": "analysis",
    "feedback": "analysis",
    "分析": "analysis",
    "score": "score",
    "probability": "score",
    "prob": "score",
    "p_correct": "score",
    "confidence": "score",
    "分数": "score",
}


def _json_candidates(text: str) -> list[str]:
    """Balanced {...} substrings (outermost), in order of appearance."""
    found: list[str] = []
    depth, start, in_str, quote, escaped = 0, -1, False, "", False
    for i, ch in enumerate(text):
        if in_str:
            if escaped:
                escaped = False
            elif ch == "\\":
                escaped = True
            elif ch == quote:
                in_str = False
            continue
        if ch in "\"'" and depth > 0:
            # Apostrophes in prose ("it's") would break scanning outside objects, so only inside.
            in_str, quote = True, ch
        elif ch == "{":
            if depth == 0:
                start = i
            depth += 1
        elif ch == "}" and depth > 0:
            depth -= 1
            if depth == 0:
                found.append(text[start : i + 1])
    return found


# A backslash that cannot start a JSON escape, or \b \f \r \t followed by letters (\frac, \beta,
# \right, \times): LaTeX written without escaping.  "\n" is left alone: models mean a newline.
_LATEX_BACKSLASH_RE = re.compile(r"(?<!\\)\\(?=[bfrt][A-Za-z]|[^\"\\/bfnrtu]|u(?![0-9a-fA-F]{4}))")


def _load_object(candidate: str) -> dict[str, Any] | None:
    """json.loads, then repairs: LaTeX backslashes, trailing commas, Python-style literals/quotes."""
    latex_safe = _LATEX_BACKSLASH_RE.sub(r"\\\\", candidate)
    no_trailing = re.sub(r",\s*([}\]])", r"\1", latex_safe)
    for attempt in (latex_safe, no_trailing, candidate):
        try:
            value = json.loads(attempt)
        except (json.JSONDecodeError, ValueError):
            continue
        return value if isinstance(value, dict) else None
    pythonish = re.sub(r"\btrue\b", "True", no_trailing)
    pythonish = re.sub(r"\bfalse\b", "False", pythonish)
    pythonish = re.sub(r"\bnull\b", "None", pythonish)
    try:
        value = ast.literal_eval(pythonish)
    except (ValueError, SyntaxError, TypeError, MemoryError, RecursionError):
        return None
    return value if isinstance(value, dict) else None


def _from_json(text: str) -> dict[str, Any]:
    """Fields of the last JSON object that carries at least one known key."""
    for candidate in reversed(_json_candidates(text)):
        obj = _load_object(candidate)
        if not obj:
            continue
        fields: dict[str, Any] = {}
        for key, value in obj.items():
            canon = _KEY_ALIASES.get(re.sub(r"[\s\-]+", "_", str(key).strip().lower()))
            if canon and canon not in fields:
                fields[canon] = value
        if fields:
            return fields
    return {}


# --------------------------------------------------------------------------- tagged text

_LABELS: list[tuple[str, str]] = [
    # Chinese labels before English; "错误步骤" before anything matching "错误".
    (r"是否正确|正确与否|正确性|正确|结论|判断|判定|评判", "correct"),
    (r"首个错误步骤|第一个错误步骤|错误步骤|出错步骤|错误步", "error_step"),
    (r"分析|理由|解释|原因|评语", "analysis"),
    (r"分数|得分|置信度|概率", "score"),
    (
        r"(?:first[\s_\-]+)?(?:error|incorrect|wrong|erroneous)[\s_\-]*step|first[\s_\-]+(?:error|mistake)"
        r"(?:[\s_\-]+step)?|step[\s_\-]+of[\s_\-]+(?:first[\s_\-]+)?error",
        "error_step",
    ),
    (
        r"is[\s_]*(?:the\s+)?(?:solution\s+|answer\s+)?correct|correctness|correct|verdict|judge?ment|"
        r"conclusion|result|label|grade|evaluation",
        "correct",
    ),
    (r"analysis|explanation|reasoning|rationale|reason|critique|feedback|comments?", "analysis"),
    (r"score|probability|p\(correct\)|confidence", "score"),
]
# Labels count at a line start or after a separator ("Correct: no / Error step: 3"); the quote and
# brace characters let truncated, unparseable JSON ('{"correct": false, "error_st') still be read.
_LABEL_RE = re.compile(
    r"(?:^|(?<=\n)|(?<=[/|;；,，]))[ \t>*#\-•\"'{]*(?:\*\*|__)?[ \t]*(?:(?:final|overall)[ \t]+)?(?P<label>"
    + "|".join(f"(?P<k{i}>{pat})" for i, (pat, _) in enumerate(_LABELS))
    + r")[\"']?[ \t]*(?:\*\*|__)?[ \t]*[:：=][ \t]*(?:\*\*|__)?",
    re.IGNORECASE,
)

_STEP_PHRASES = [
    re.compile(
        r"\bstep\s*(\d+)\s+(?:is|was|contains|has|introduces|makes|uses|applies|gives|computes)\s+"
        r"(?:an?\s+|the\s+)?(?:first\s+)?"
        r"(?:error|mistake|incorrect|wrong|flawed|erroneous)",
        re.IGNORECASE,
    ),
    re.compile(
        r"\bfirst\s+(?:error|mistake|incorrect\s+step|wrong\s+step)\s+(?:is|occurs|appears|happens|lies)?\s*"
        r"(?:in|at|on)?\s*step\s*(\d+)",
        re.IGNORECASE,
    ),
    re.compile(r"\b(?:error|mistake)\s+(?:occurs|appears|happens|is)\s+(?:in|at)\s+step\s*(\d+)", re.IGNORECASE),
    re.compile(r"第\s*(\d+|[一二三四五六七八九十])\s*步[^。，,.;；\n]{0,8}?(?:错|有误|不正确|不对)"),
    re.compile(
        r"(?:错误|出错|错)\s*(?:出现|发生|始于|在于|位于)?\s*(?:在|于)?\s*第\s*(\d+|[一二三四五六七八九十])\s*步"
    ),
]


def _tag_value(canon: str, value: str) -> Any:
    """Parsed value of a one-line label, or None when it does not parse."""
    value = value.split("\n", 1)[0].strip().strip("\"',}").strip()
    if canon == "correct":
        return _to_bool(value)
    if canon == "error_step":
        return _to_step(value)
    if canon == "score":
        return _to_score(value)
    return None


def _from_tags(text: str) -> dict[str, Any]:
    """Fields from 'Label: value' segments (last valid occurrence of each label wins).

    A label whose value does not parse (e.g. a line "Result: x = 5" inside an
    analysis) is treated as ordinary text, so it neither ends the analysis nor
    sets a field.
    """
    tagged: list[tuple[re.Match[str], str, Any]] = []
    for match in _LABEL_RE.finditer(text):
        index = int(next(k for k, v in match.groupdict().items() if k.startswith("k") and v is not None)[1:])
        canon = _LABELS[index][1]
        if canon == "analysis":
            tagged.append((match, canon, None))
            continue
        line_end = text.find("\n", match.end())
        segment = text[match.end() : len(text) if line_end == -1 else line_end]
        # Inline "Correct: no / Error step: 3": the value stops at the next separator.
        value = _tag_value(canon, re.split(r"\s[/|;；]\s|[,，](?=\s*[\"'A-Za-z\u4e00-\u9fff])", segment)[0])
        if value is not None:
            tagged.append((match, canon, value))
    fields: dict[str, Any] = {}
    for i, (match, canon, value) in enumerate(tagged):
        if canon == "analysis":
            end = tagged[i + 1][0].start() if i + 1 < len(tagged) else len(text)
            analysis = text[match.end() : end].strip().strip("/|;；").strip()
            analysis = re.sub(r"^[\"']|[\"']\s*[,}]*\s*$", "", analysis).strip().strip("*_").strip()
            fields[canon] = analysis
        else:
            fields[canon] = value
    return fields


def _from_phrases(text: str) -> int | None:
    """'Step 3 is the first error' / '第3步出现错误' style statements."""
    for pattern in _STEP_PHRASES:
        matches = list(pattern.finditer(text))
        if matches:
            value = matches[-1].group(1)
            return int(value) if value.isdigit() else _CN_NUM.get(value)
    return None


_BARE_VERDICT_RE = re.compile(
    r"^\W*(?:the\s+(?:solution|answer|reasoning)\s+is\s+)?(?P<word>[^\W\d_]+(?:\s+correct)?)\W*$", re.IGNORECASE
)


def _bare_verdict(text: str) -> bool | None:
    """A reply whose first line is only a judgement word ("Incorrect.", "**Correct**", "错误")."""
    lines = [line for line in text.strip().splitlines() if line.strip()]
    if not lines:
        return None
    match = _BARE_VERDICT_RE.match(lines[0].strip())
    if match is None or len(match.group("word")) > 20:
        return None
    word = match.group("word").strip().lower()
    if word in {"no", "yes"} and len(lines) > 1:
        return None  # too ambiguous as the opening of a longer reply
    value = _to_bool(word)
    if value is None or _BOOL_RE.fullmatch(word) is None:
        return None
    return value


# --------------------------------------------------------------------------- parse_verdict


def _free_text_analysis(text: str) -> str:
    """The reply minus its 'Label: value' lines: the explanation of an untagged reply."""
    kept = [line for line in text.strip().splitlines() if not _from_tags(line)]
    return "\n".join(kept).strip()


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
    json_fields = _from_json(text)
    fields = dict(json_fields)
    for key, value in _from_tags(text).items():
        fields.setdefault(key, value)

    correct = _to_bool(fields["correct"]) if "correct" in fields else None
    step_value = _to_step(fields["error_step"]) if "error_step" in fields else None
    error_step = step_value if isinstance(step_value, int) else None
    if error_step is None and step_value != "none" and correct is not True:
        # Free-text phrases are only consulted when no explicit "correct" contradicts them.
        error_step = _from_phrases(text)
    score = _to_score(fields["score"]) if "score" in fields else None
    analysis_value = fields.get("analysis", "")
    analysis = analysis_value.strip() if isinstance(analysis_value, str) else json.dumps(analysis_value)

    if correct is None and not fields:
        correct = _bare_verdict(text)
        if correct is not None:
            text_after = text.strip().split("\n", 1)
            text = text_after[1] if len(text_after) > 1 else ""  # the verdict word is no analysis
    if not analysis and "analysis" not in fields and not json_fields:
        analysis = _free_text_analysis(text)

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
