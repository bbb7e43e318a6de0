"""Reading an ORM reply's fields out of free-form text: the tolerant half of `parse_verdict`.

The policy that turns these fields into a `Verdict` (contradictions, out-of-range steps, defaults)
lives in `mathse.judging.verdict`; this module only finds values. In order of preference:
JSON objects (fenced, single-quoted, trailing commas, Python literals, unescaped LaTeX),
tagged lines ("Correct: no", "错误步骤：第3步", "Score: 0.8"), step phrases ("Step 3 is the
first error"), and a bare judgement word as the whole first line ("Incorrect.").
Nothing here raises on odd input except through a parser bug, which `parse_verdict` contains.
"""

from __future__ import annotations

import ast
import json
import re
from typing import Any, Literal

__all__ = [
    "bare_verdict",
    "fields_from_json",
    "fields_from_tags",
    "free_text_analysis",
    "step_from_phrases",
    "to_bool",
    "to_score",
    "to_step",
]


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


def to_bool(value: Any) -> bool | None:
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


def to_step(value: Any) -> int | Literal["none"] | None:
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


def to_score(value: Any) -> float | None:
    """P(correct) from a JSON value or label text ("83%" -> 0.83); None outside [0, 1]."""
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


def fields_from_json(text: str) -> dict[str, Any]:
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
        return to_bool(value)
    if canon == "error_step":
        return to_step(value)
    if canon == "score":
        return to_score(value)
    return None


def fields_from_tags(text: str) -> dict[str, Any]:
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


def step_from_phrases(text: str) -> int | None:
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


def bare_verdict(text: str) -> bool | None:
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
    value = to_bool(word)
    if value is None or _BOOL_RE.fullmatch(word) is None:
        return None
    return value


# --------------------------------------------------------------------------- free text


def free_text_analysis(text: str) -> str:
    """The reply minus its 'Label: value' lines: the explanation of an untagged reply."""
    kept = [line for line in text.strip().splitlines() if not fields_from_tags(line)]
    return "\n".join(kept).strip()
