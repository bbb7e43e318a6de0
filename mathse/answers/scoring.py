"""Benchmark scoring: extract the model's answer, decide correctness, optionally ask an LLM judge.

Rules first (`score_response`):

* multiple choice: the option letter (``\\boxed{B}``, "the answer is (B)", a bare "B"), or the
  final answer equal to exactly one option's text; compared with the reference letter.
* MathVista free form, by `answer_type`: the unit stripped, then integer (numerically equal),
  float (both rounded to `precision` decimals, as MathVista's scorer does) or list (element-wise);
  math-verify (`answers_match`) decides what is not a plain number (``\\frac{3}{2}``).
* other free form: `answers_match` (math-verify equivalence with string fallbacks).

The final answer is the last ``\\boxed{}``, else a final-answer line, else the whole response
when it is a short bare answer ("14", "3.5 cm"), else what the final sentence concludes with
("The number missing in the sequence is 14.", `mathse.answers.conclusion`; nothing when that sentence is
ambiguous). Responses where none is found are "unextracted":
only those go to the optional LLM judge (`run_judge`), whose verdicts are kept apart, so accuracy
is reported both without and with it.
"""

from __future__ import annotations

import math
import re
import threading
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from mathse.answers.conclusion import (
    number_word,
    read_conclusion,
    read_conclusion_choice,
    read_opening,
    stated_letter,
)
from mathse.answers.equivalence import normalize_answer, unicode_math_to_latex
from mathse.answers.evalsets import LETTERS, EvalItem
from mathse.answers.extraction import answers_match, extract_choice, extract_final_answer
from mathse.answers.response_text import reply_parts, strip_end_markers
from mathse.api.client import ChatClient
from mathse.api.messages import ChatRequest, ChatResult, system_message, user_message
from mathse.run.config import ApiConfig
from mathse.run.usage import UsageLedger

__all__ = [
    "JUDGE_SYSTEM_PROMPT",
    "Score",
    "extract_answer",
    "judge_prompt",
    "numeric_value",
    "parse_judge_reply",
    "run_judge",
    "score_response",
]

# A response of one short line that starts like a number, list or formula is a bare answer.
_BARE_MAX_CHARS = 30
_BARE_RE = re.compile(r"(?:[A-Za-z]\s*=\s*)?[-+]?[$(\[]?\s*(?:\d|\.\d|\\(?:frac|dfrac|sqrt|pi))")
# How much of a long response the judge sees (the end, where the answer is).
_JUDGE_TAIL_CHARS = 4000
_MAX_MATH_LEN = 300  # longer strings are not numbers worth handing to sympy
_MAX_REPLY_PARTS = 6  # invented follow-up questions read for an answer before the whole reply is


@dataclass(frozen=True)
class Score:
    """The rule-based verdict on one response."""

    extracted: str | None  # the answer found (the letter for choice items); None: nothing found
    correct: bool
    reason: str


# ---------------------------------------------------------------------------------------------
# Extraction


def _bare_answer(response: str) -> str | None:
    """The whole response when it is a short bare answer ("14", "3.5 cm", "x = 2", "[1, 2]", "\\frac{1}{2}")."""
    s = response.strip().strip("*").strip()
    if "\n" in s or len(s) > _BARE_MAX_CHARS or not s.isprintable() or not _BARE_RE.match(s):
        return None
    return s.strip("$").strip().rstrip(".").strip() or None


def _final_text(response: str) -> str | None:
    return extract_final_answer(response) or _bare_answer(response)


def extract_answer(item: EvalItem, response: str | None) -> str | None:
    """The answer the rules read from `response`: a letter for choice items, else the answer text.

    Only the reply counts: raw end-of-sequence tokens end it, and of invented follow-up questions
    ("Question: ... Answer: 7" after the reply) the first complete answer, to the asked question, is read.
    """
    if not response or not response.strip():
        return None
    reply = strip_end_markers(response)
    parts = reply_parts(reply)
    for k in range(1, min(len(parts), _MAX_REPLY_PARTS)):
        answer = _extract(item, "".join(parts[:k]))
        if answer is not None:
            return answer
    return _extract(item, reply)


def _extract(item: EvalItem, text: str) -> str | None:
    if not text.strip():
        return None
    if item.kind != "choice":
        final = _final_text(text)
        if final:
            return number_word(final) or final  # "The answer is four." -> "4"
        # An answer stated first ("14.", the rest explaining it) and one concluded last must agree.
        opening, concluded = read_opening(text), read_conclusion(text)
        if opening is not None and concluded is not None and not answers_match(opening, concluded):
            return None
        return opening or concluded
    # Choice: a letter, or an option's text (extract_choice matches both, bare answers included);
    # an explicit final answer that is neither is kept (and scored wrong); anything else is unread.
    options = list(item.options) or list(LETTERS[:5])  # options drawn in the image: A-E
    final = extract_final_answer(text)
    letter = extract_choice(final, options) if final else None
    if letter or final:
        return letter or extract_choice(text, options) or final
    letter = extract_choice(text, options)
    if letter:
        return letter
    # A letter stated with its option's text, or an option's text opening the reply, outranks a later
    # mention of some option's words; a later conclusion naming another letter leaves nothing passed.
    letters = LETTERS[: len(options)]
    stated = stated_letter(text, options, letters) or read_opening(text, options)
    concluded = read_conclusion_choice(text, options, letters, item.question, named=stated is None)
    if stated is None:
        return concluded
    if concluded is not None and concluded in letters and len(concluded) == 1 and concluded != stated:
        return None
    return stated


# ---------------------------------------------------------------------------------------------
# Numbers, units, lists (MathVista)

_TEXT_WRAP_RE = re.compile(r"\\(?:text|textrm|mathrm|mbox|operatorname)\s*\{([^{}]*)\}")
_PLAIN_NUMBER_RE = re.compile(r"[-+]?(?:\d+(?:\.\d*)?|\.\d+)(?:[eE][-+]?\d+)?")
# A number followed by a unit-like tail ("1000 g", "3.5 cm^2", "12 units", "45%").
_NUMBER_WITH_UNIT_RE = re.compile(r"(?P<num>[-+]?(?:\d+(?:\.\d*)?|\.\d+))\s*(?:[A-Za-z%°²³][A-Za-z%°²³/^{}\s.\d]*)?")


def _strip_unit(text: str, unit: str | None) -> str:
    """Drop the record's unit (and LaTeX text wrappers) from the end of an answer."""
    s = _TEXT_WRAP_RE.sub(r"\1", text).replace("\\$", "").replace("$", "").strip()
    if unit:
        bare_unit = unit.strip()
        if bare_unit and s.endswith(bare_unit) and len(s) > len(bare_unit):
            s = s[: -len(bare_unit)].strip()
    return s


def _timeout() -> int | None:
    # math-verify's timeouts use signal.alarm, which only works in the main thread.
    return 3 if threading.current_thread() is threading.main_thread() else None


def numeric_value(text: str) -> float | None:
    """The number an answer denotes: "1,000", "$12", "45%" -> 45, "x = 3.5", "\\frac{3}{2}", "1000 g"."""
    s = _TEXT_WRAP_RE.sub(r"\1", unicode_math_to_latex(text)).strip()
    if "=" in s:  # "x = 3.5": the value is on the right
        s = s.rsplit("=", 1)[1]
    s = s.replace("\\$", "").replace("$", "").replace("\\%", "%").replace("\\!", "").replace("\\,", "")
    s = re.sub(r"\^\s*\{?\\circ\}?|°", "", s).strip().rstrip(".").strip()
    plain = s.replace(",", "").replace(" ", "")
    if _PLAIN_NUMBER_RE.fullmatch(plain.rstrip("%")):
        return float(plain.rstrip("%"))
    match = _NUMBER_WITH_UNIT_RE.fullmatch(s.replace(",", ""))
    if match:
        return float(match.group("num"))
    if not s or len(s) > _MAX_MATH_LEN:
        return None
    try:
        from math_verify import ExprExtractionConfig, LatexExtractionConfig, parse

        parsed = parse(f"${s}$", [LatexExtractionConfig(), ExprExtractionConfig()], parsing_timeout=_timeout())
    except Exception:  # math-verify/sympy can raise anything on odd input
        return None
    for expr in parsed:
        if getattr(expr, "is_number", False):
            try:
                value = complex(expr)
            except (TypeError, ValueError):
                continue
            if abs(value.imag) < 1e-12 and math.isfinite(value.real):
                return value.real
    return None


def _split_list(text: str) -> list[str]:
    s = text.strip().strip("$").strip()
    s = re.sub(r"^\\left\s*|\\right\s*(?=[\])}]$)", "", s)
    if len(s) >= 2 and s[0] in "[({" and s[-1] in "])}":
        s = s[1:-1]
    return [part.strip() for part in s.split(",") if part.strip()]


def _elements_equal(pred: str, ref: str, precision: int | None) -> bool:
    a, b = numeric_value(pred), numeric_value(ref)
    if a is not None and b is not None:
        if precision is not None:
            return round(a, precision) == round(b, precision)
        return math.isclose(a, b, rel_tol=1e-6, abs_tol=1e-9)
    return bool(normalize_answer(pred)) and normalize_answer(pred) == normalize_answer(ref)


def _mathvista_free(extracted: str, item: EvalItem) -> bool:
    meta = item.metadata
    answer_type, precision = meta.get("answer_type"), meta.get("precision")
    text = _strip_unit(extracted, meta.get("unit"))
    if answer_type == "list":
        pred, ref = _split_list(text), _split_list(item.answer)
        return len(pred) == len(ref) > 0 and all(
            _elements_equal(p, r, precision) for p, r in zip(pred, ref, strict=True)
        )
    if answer_type in ("integer", "float"):
        value, reference = numeric_value(text), numeric_value(item.answer)
        if value is not None and reference is not None:
            if answer_type == "float":
                places = int(precision) if precision is not None else 1
                return round(value, places) == round(reference, places)
            return math.isclose(value, reference, rel_tol=0, abs_tol=1e-9)
    return answers_match(text, item.answer)


# ---------------------------------------------------------------------------------------------
# Scoring


def score_response(item: EvalItem, response: str | None) -> Score:
    """Rule-based verdict on one model response to `item`."""
    extracted = extract_answer(item, response)
    if extracted is None:
        return Score(None, False, "no answer found")
    if item.kind == "choice":
        # A final answer that is neither a letter nor one option's text is wrong.
        correct = len(extracted) == 1 and extracted in LETTERS and extracted == item.answer_letter
    elif item.format == "mathvista":
        correct = _mathvista_free(extracted, item)
    else:
        correct = answers_match(extracted, item.answer)
    expected = item.answer_letter or item.answer
    return Score(extracted, correct, "match" if correct else f"mismatch: got {extracted}, expected {expected}")


# ---------------------------------------------------------------------------------------------
# Optional LLM judge (only for responses the rules could not read)

JUDGE_SYSTEM_PROMPT = (
    "You grade answers to math problems. Compare the final answer of the model's response with the "
    "reference answer. Equivalent forms count as equal (2/4 = 0.5 = 50%; for multiple choice the option "
    "letter or the option's text). Reply with exactly one word: Correct or Incorrect."
)


def judge_prompt(item: EvalItem, response: str) -> str:
    """The user turn for the judge: question, reference and the end of the response (text only)."""
    tail = response[-_JUDGE_TAIL_CHARS:]
    reference = item.answer
    if item.kind == "choice" and item.answer_letter:
        index = LETTERS.index(item.answer_letter)
        text = item.options[index] if index < len(item.options) else ""
        reference = f"({item.answer_letter}) {text}".strip() if text != item.answer_letter else item.answer_letter
    return (
        f"Question:\n{item.question}\n\nReference answer: {reference}\n\nModel response:\n{tail}\n\n"
        "Is the model's final answer equivalent to the reference answer? Reply Correct or Incorrect."
    )


def parse_judge_reply(text: str | None) -> bool | None:
    """True / False from the judge's reply; None when it says neither."""
    if not text:
        return None
    lower = text.strip().lower().lstrip("*# ")
    if lower.startswith("incorrect"):
        return False
    if lower.startswith("correct"):
        return True
    if re.search(r"\b(?:incorrect|not\s+correct|wrong)\b", lower):
        return False
    if re.search(r"\bcorrect\b", lower):
        return True
    return None


def run_judge(
    api: ApiConfig,
    pending: list[tuple[EvalItem, str]],
    cache_dir: Path,
    ledger: UsageLedger | None = None,
    stage: str = "eval",
    progress: str | None = None,
) -> dict[str, dict[str, Any]]:
    """Ask the judge about each (item, response); returns {item id: verdict record}.

    A verdict record is {"verdict": "correct" | "incorrect" | "unparseable" | "failed", "raw": ...,
    "error": ...}. Replies are cached on disk by ChatClient, so a rerun pays for nothing twice.
    """
    if not pending:
        return {}
    client = ChatClient(api, cache_dir, ledger=ledger, stage=stage)
    requests = (  # built as the client sends them, not all up front
        ChatRequest(key=item.id, messages=[system_message(JUDGE_SYSTEM_PROMPT), user_message(judge_prompt(item, resp))])
        for item, resp in pending
    )
    verdicts: dict[str, dict[str, Any]] = {}

    def settle(result: ChatResult) -> None:
        if not result.ok:
            verdicts[result.key] = {"verdict": "failed", "error": result.error}
            return
        decision = parse_judge_reply(result.text)
        label = "unparseable" if decision is None else ("correct" if decision else "incorrect")
        verdicts[result.key] = {"verdict": label, "raw": (result.text or "")[:500]}

    client.complete_many_sync(requests, on_result=settle, progress=progress, collect=False, total=len(pending))
    return {item.id: verdicts[item.id] for item, _ in pending}  # in request order, as before
