"""Answer equivalence: normalisation and math-verify comparison of two answer strings.

Symbolic parsing and equivalence are delegated to math-verify; this module brings answers to a
form it reads (Unicode math as LaTeX, remarks and units dropped), and falls back to a normalised
string or numeric comparison when math-verify cannot parse an answer. Finding the answer in a
reasoning path and multiple choice are `mathse.answers.extraction`.

Thread safety: math-verify's built-in timeouts use ``signal.alarm``, which only
works in the main thread (elsewhere it raises ``ValueError``).  We therefore
pass ``parsing_timeout=None`` / ``timeout_seconds=None`` off the main thread and
instead refuse to hand math-verify inputs that are known to hang sympy (power
towers, huge factorials, very long strings); those fall back to string matching.
Parses and comparisons are memoised (``functools.lru_cache``, thread-safe), since
one reference answer is compared with many sampled paths.
"""

from __future__ import annotations

import logging
import math
import re
import threading
from functools import lru_cache

from math_verify import ExprExtractionConfig, LatexExtractionConfig, parse, verify

__all__ = [
    "last_boxed",
    "math_equal",
    "normalize_answer",
    "strip_remark",
    "unicode_math_to_latex",
    "values_match",
]

# Seconds math-verify may spend per parse / comparison when we are in the main thread.
_MAIN_THREAD_TIMEOUT_S = 3
# Answers longer than this are not real final answers; sympy on them is slow and unbounded.
_MAX_MATH_LEN = 300
_CONFIGS = (LatexExtractionConfig(), ExprExtractionConfig())


class _DropTimeoutDisabledWarning(logging.Filter):
    """Hide math-verify's one-off 'Timeout is disabled' warning: we guard inputs ourselves."""

    def filter(self, record: logging.LogRecord) -> bool:
        return not record.getMessage().startswith("Timeout is disabled")


for _name in ("math_verify.parser", "math_verify.grader"):
    logging.getLogger(_name).addFilter(_DropTimeoutDisabledWarning())


# --------------------------------------------------------------------------- answer text

_BOXED_RE = re.compile(r"\\(?:boxed|fbox)\s*\{")


def _braced(text: str, open_idx: int) -> str | None:
    """Content of the brace group whose '{' is at ``open_idx`` (nesting-aware)."""
    depth = 0
    for i in range(open_idx, len(text)):
        ch = text[i]
        if ch == "\\":
            continue
        if ch == "{" and (i == 0 or text[i - 1] != "\\"):
            depth += 1
        elif ch == "}" and (i == 0 or text[i - 1] != "\\"):
            depth -= 1
            if depth == 0:
                return text[open_idx + 1 : i]
    return None  # unbalanced: truncated generation


def last_boxed(text: str) -> str | None:
    """Content of the last complete ``\\boxed{...}`` (or ``\\fbox``) in ``text``, stripped; else None."""
    for match in reversed(list(_BOXED_RE.finditer(text))):
        content = _braced(text, match.end() - 1)
        if content is not None:
            return content.strip()
    return None


# A parenthetical after the answer is a remark ("14 (11 + 3)", "12π (about 37.7)") when it holds
# a word or a calculation; "(1, 2)" or "(B)" are not remarks.
_REMARK_RE = re.compile(r"\s+\((?P<body>[^()]*)\)\s*[.。]?$")
_REMARK_BODY_RE = re.compile(r"(?<![\\A-Za-z])[A-Za-z]{2,}|[=+≈×*]")


def strip_remark(answer: str) -> str:
    """Drop a trailing parenthetical remark after an answer: "14 (since 11 + 3 = 14)" -> "14"."""
    match = _REMARK_RE.search(answer)
    if not match or not _REMARK_BODY_RE.search(match.group("body")):
        return answer
    head = answer[: match.start()].rstrip()
    # "x \in (1, 2)" or "5 + (2 + 3)": the parenthesis is part of the expression.
    if not head or re.search(r"(?:[=+\-*/,<>]|\\in|\\cup|\\times|\\cdot)$", head):
        return answer
    return head


# --------------------------------------------------------------------------- equivalence

_TEXT_CMD_RE = re.compile(r"\\(?:text|textbf|textit|mathrm|mathbf|mbox|operatorname)\s*\{([^{}]*)\}")
_UNIT_WORDS = (
    r"(?:square\s+|cubic\s+|sq\.?\s*)?(?:units?|cm|mm|km|m|kg|g|mg|s|sec|seconds?|minutes?|min|"
    r"hours?|h|hrs?|days?|meters?|metres?|centimeters?|kilometers?|inches|inch|in|feet|foot|ft|"
    r"yards?|miles?|degrees?|deg|dollars?|cents?|grams?|kilograms?|liters?|litres?|l|ml|mph|"
    r"km/h|m/s|cm/s|元|米|厘米|千米|度|个|人|只|天|小时|分钟|秒)"
)
# After a number, a closing brace or parenthesis, or a constant ("12\\pi cm^2").
_TRAILING_UNIT_RE = re.compile(
    rf"(?:(?<=[\d}}.)])|(?<=\\pi)|(?<=\\infty))\s*{_UNIT_WORDS}(?:\^?\{{?[23]\}}?|²|³)?$", re.IGNORECASE
)
_THOUSANDS_RE = re.compile(r"[-+]?\d{1,3}(?:[,\u2009\u202f\u00a0 ]\d{3})+(?:\.\d+)?")
# Unicode math as models write it -> the LaTeX math-verify parses (order matters: roots first).
_UNICODE_ROOT_RES = (
    (re.compile(r"√\s*\{([^{}]*)\}"), r"\\sqrt{\1}"),
    (re.compile(r"√\s*\(([^()]*)\)"), r"\\sqrt{\1}"),
    (re.compile(r"√\s*(\d+(?:\.\d+)?|[A-Za-z])"), r"\\sqrt{\1}"),
)
_UNICODE_SYMBOLS = {
    "−": "-", "–": "-", "\u2009": " ", "\u202f": " ", "\u00a0": " ", "×": r" \times ", "·": r" \cdot ",
    "⋅": r" \cdot ", "÷": r" \div ", "≤": r" \le ", "≥": r" \ge ", "≠": r" \ne ", "≈": r" \approx ",
    "∞": r"\infty ", "π": r"\pi ", "°": r"^{\circ}", "²": "^{2}", "³": "^{3}", "½": r"\frac{1}{2}",
    "¼": r"\frac{1}{4}", "¾": r"\frac{3}{4}", "（": "(", "）": ")", "，": ",",
}  # fmt: skip
_UNICODE_SYMBOL_RE = re.compile("|".join(map(re.escape, _UNICODE_SYMBOLS)))


def unicode_math_to_latex(text: str) -> str:
    """Unicode math as LaTeX: 5√2 -> 5\\sqrt{2}, 12π -> 12\\pi, 60° -> 60^{\\circ}, × -> \\times, \\dfrac -> \\frac.

    Models and benchmarks mix Unicode math with LaTeX (MathVerse's options are "3√{3}"); both
    sides are brought to LaTeX before they are compared or matched with an option.
    """
    for pattern, repl in _UNICODE_ROOT_RES:
        text = pattern.sub(repl, text)
    text = _UNICODE_SYMBOL_RE.sub(lambda m: _UNICODE_SYMBOLS[m.group(0)], text)
    text = re.sub(r"\\[dt]frac\b", r"\\frac", text)
    return re.sub(r"(\\pi|\\infty) (?=[\s)}\]^,.]|$)", r"\1", text).strip()


_WORDY_RE = re.compile(r"[A-Za-z][A-Za-z\s'\-]*[A-Za-z]")


def normalize_answer(answer: str) -> str:
    """Canonical string form used when math-verify cannot decide.

    Drops math delimiters, ``\\text{}``-style wrappers, spacing commands, degree
    signs, percent signs, currency, a trailing unit after a number, the trailing
    period and case; removes all whitespace.
    """
    s = unicode_math_to_latex(answer.strip())
    boxed = last_boxed(s)
    if boxed is not None:
        s = boxed
    s = strip_remark(s)
    if _THOUSANDS_RE.fullmatch(s.strip().strip("$")):  # "1,260,000" / "1 260"
        s = re.sub(r"[,\s]", "", s)
    for delimiter in (r"\$", "$", r"\(", r"\)", r"\[", r"\]"):
        s = s.replace(delimiter, "")
    for _ in range(3):  # nested \text{\textbf{..}}
        s = _TEXT_CMD_RE.sub(r"\1", s)
    s = re.sub(r"\\[,;:! ]|\\quad|\\qquad|\\left|\\right|\\displaystyle", " ", s)
    s = re.sub(r"\\d?frac", r"\\frac", s)
    s = re.sub(r"\^\s*\{?\s*\\circ\s*\}?|°|\\degree", "", s)
    s = s.replace(r"\%", "").replace("%", "").replace("−", "-")
    s = s.strip().rstrip("。.").strip()
    s = _TRAILING_UNIT_RE.sub("", s).strip()
    s = re.sub(r"\s+", "", s).lower()
    return s


def _as_math(answer: str) -> str:
    """Wrap a bare answer in $...$ so math-verify reads it as LaTeX (escaping '%')."""
    answer = unicode_math_to_latex(answer)
    if re.search(r"(?<!\\)\$", answer) or r"\(" in answer or r"\[" in answer:
        return answer
    body = re.sub(r"(?<!\\)%", r"\\%", answer)
    # \text{5 apples} would become one symbol; unwrap text so "5" is seen.
    body = _TEXT_CMD_RE.sub(r"\1", body)
    return f"${body}$"


def _too_expensive(answer: str) -> bool:
    """Inputs on which sympy can run unboundedly (no timeout exists off the main thread)."""
    if len(answer) > _MAX_MATH_LEN:
        return True
    # Power towers such as 10^{10^{10}} make verify() hang while evaluating.
    if re.search(r"\^\s*\{[^{}]*\^", answer) or re.search(r"\^\s*\d+\s*\^", answer):
        return True
    # (1+x)^{1000}: symbolic expansion takes seconds to minutes.
    if re.search(r"\)\s*\^\s*\{?\s*\d{3,}", answer):
        return True
    # Enormous factorials / literals.
    return bool(re.search(r"\d{5,}\s*!", answer) or re.search(r"\d{200,}", answer))


def _timeouts() -> int | None:
    # signal.alarm is only usable from the main thread of the main interpreter.
    return _MAIN_THREAD_TIMEOUT_S if threading.current_thread() is threading.main_thread() else None


@lru_cache(maxsize=4096)
def _parse(answer: str) -> list:
    # Cached: a reference is compared with many sampled paths.  verify() only reads the result.
    return parse(_as_math(answer), list(_CONFIGS), parsing_timeout=_timeouts())  # type: ignore[arg-type]


@lru_cache(maxsize=16384)
def math_equal(reference: str, predicted: str) -> bool:
    """math-verify equivalence of two answer strings; False if either cannot be parsed."""
    if _too_expensive(reference) or _too_expensive(predicted):
        return False
    try:
        gold = _parse(reference)
        pred = _parse(predicted)
        if not gold or not pred:
            return False
        return bool(verify(gold, pred, timeout_seconds=_timeouts()))
    except Exception:  # math-verify/sympy can raise anything on odd input
        return False


def _numbers_equal(a: str, b: str) -> bool:
    try:
        x, y = float(a.replace(",", "")), float(b.replace(",", ""))
    except ValueError:
        return False
    return math.isclose(x, y, rel_tol=1e-6, abs_tol=1e-9)


def _is_wordy(answer: str) -> bool:
    """A plain-word answer ("yes", "red", "isosceles") that sympy would mangle into a product."""
    s = _TEXT_CMD_RE.sub(r"\1", answer).strip().strip("$").strip().rstrip(".")
    return bool(s) and len(s) >= 2 and _WORDY_RE.fullmatch(s) is not None and "\\" not in s


def values_match(predicted: str, reference: str) -> bool:
    """Equivalence of two free-form answers: normalised string, number, then math-verify.

    Word answers ("yes", "red") are compared as strings only, since sympy would parse them as
    commutative products (red == der).
    """
    norm_pred, norm_ref = normalize_answer(predicted), normalize_answer(reference)
    if norm_pred and norm_pred == norm_ref:
        return True
    if _is_wordy(predicted) or _is_wordy(reference):
        return False
    if _numbers_equal(norm_pred, norm_ref):
        return True
    return math_equal(_without_unit(reference), _without_unit(predicted))


def _without_unit(answer: str) -> str:
    """The answer without a trailing remark or unit, for math-verify ("12\\pi \\text{ cm}^2" -> "12\\pi")."""
    s = strip_remark(unicode_math_to_latex(answer.strip()))
    unwrapped = _TEXT_CMD_RE.sub(r" \1", s).strip()
    bare = _TRAILING_UNIT_RE.sub("", unwrapped.rstrip("$").rstrip()).strip()
    return bare if bare and bare != unwrapped.rstrip("$").rstrip() else s
