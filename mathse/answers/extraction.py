"""Final-answer extraction and answer equivalence (the rule-based checker).

Symbolic parsing and equivalence are delegated to math-verify; this module only
finds the answer in a reasoning path, handles multiple-choice letters, and falls
back to a normalised string comparison when math-verify cannot parse an answer.

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
from dataclasses import dataclass
from functools import lru_cache

from math_verify import ExprExtractionConfig, LatexExtractionConfig, parse, verify

__all__ = [
    "RuleCheck",
    "answers_match",
    "check_path",
    "extract_choice",
    "extract_final_answer",
    "is_choice_question",
    "match_option_text",
    "normalize_answer",
    "strip_remark",
    "unicode_math_to_latex",
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


@dataclass(frozen=True)
class RuleCheck:
    """Outcome of checking one reasoning path against the reference answer."""

    correct: bool
    extracted: str | None
    reason: str


# --------------------------------------------------------------------------- extraction

_BOXED_RE = re.compile(r"\\(?:boxed|fbox)\s*\{")
_FINAL_LINE_RES = (
    # Most specific first; for each pattern the last occurrence in the text wins.
    re.compile(r"final\s+answer\s*(?:is|:|：)\s*:?\s*(?P<ans>.+)", re.IGNORECASE),
    re.compile(r"(?:最终答案|答案)\s*(?:是|为|:|：)\s*(?P<ans>.+)"),
    re.compile(r"(?:^|\n)\s*#{4}\s*(?P<ans>\S.*)"),
    re.compile(r"(?:^|[\s*])answer\s*(?:is|:|：)\s*:?\s*(?P<ans>.+)", re.IGNORECASE),
)


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


def _last_boxed(text: str) -> str | None:
    for match in reversed(list(_BOXED_RE.finditer(text))):
        content = _braced(text, match.end() - 1)
        if content is not None:
            return content.strip()
    return None


def _clean_answer(ans: str) -> str:
    """Trim markdown, math delimiters and sentence punctuation around an answer."""
    ans = ans.strip()
    boxed = _last_boxed(ans)
    if boxed is not None:
        return boxed
    ans = re.sub(r"\s*(?:I hope it is correct|I hope this helps).*$", "", ans, flags=re.IGNORECASE)
    # "5 because ..." / "5. Let me double-check": keep only the answer itself.
    ans = re.split(r"\.\s+(?=[A-Z])|[,;]?\s+(?:because|since|which|as\s+required)\b|。", ans, maxsplit=1)[0]
    ans = ans.strip().strip("*").strip()
    for left, right in (("$$", "$$"), ("$", "$"), (r"\(", r"\)"), (r"\[", r"\]")):
        if ans.startswith(left) and ans.endswith(right) and len(ans) > len(left) + len(right):
            ans = ans[len(left) : -len(right)].strip()
            break
    ans = ans.rstrip("。．.!！").strip().strip("*").strip()
    return strip_remark(ans)


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


def extract_final_answer(text: str) -> str | None:
    """Return the path's final answer: the last ``\\boxed{...}``, else a final-answer line.

    Recognised lines: "The final answer is X", "Final answer: X", "Answer: X",
    "The answer is X", "答案：X" / "答案是X", "#### X".  Returns None when absent.
    """
    if not text:
        return None
    boxed = _last_boxed(text)
    if boxed:
        return boxed
    for pattern in _FINAL_LINE_RES:
        matches = list(pattern.finditer(text))
        if matches:
            ans = _clean_answer(matches[-1].group("ans"))
            if ans:
                return ans
    return None


# --------------------------------------------------------------------------- multiple choice

_LETTERS = "ABCDEFGH"
_CHOICES_HEADER_RE = re.compile(r"^[ \t]*(?:choices|options|选项)[ \t]*[:：]", re.IGNORECASE | re.MULTILINE)
# An option marker: "(B)" / "（B）" anywhere, or "B." "B:" "B)" "B、" after whitespace.
_OPT_MARKER_RE = re.compile(
    r"\(\s*(?P<p>[A-H])\s*\)|（(?P<f>[A-H])）|(?:(?<=\s)|^|(?<=[:：]))(?P<d>[A-H])\s*[.．:：)）、]"
)


def _consecutive_run(markers: list[re.Match[str]]) -> list[re.Match[str]]:
    """Last run of markers lettered A, B, C... in text order (needs at least A and B)."""
    best: list[re.Match[str]] = []
    run: list[re.Match[str]] = []
    for marker in markers:
        letter = _marker_letter(marker)
        if letter == "A":
            run = [marker]
        elif run and len(run) < len(_LETTERS) and letter == _LETTERS[len(run)]:
            run.append(marker)
        else:
            continue
        if len(run) >= 2:
            best = list(run)
    return best


def _marker_letter(marker: re.Match[str]) -> str:
    return marker.group("p") or marker.group("f") or marker.group("d")


def _plausible_first_marker(text: str, marker: re.Match[str]) -> bool:
    """'A.'-style markers only count at a line start or right after a Choices: header."""
    if marker.group("d") is None:
        return True
    before = text[: marker.start()]
    line_prefix = before[before.rfind("\n") + 1 :]
    return not line_prefix.strip() or _CHOICES_HEADER_RE.search(line_prefix) is not None


def _strip_option(text: str) -> str:
    return " ".join(text.split()).rstrip(",;，；").strip()


def is_choice_question(question: str | None) -> list[str] | None:
    """Return option texts (index 0 = A) if the question is multiple choice, else None.

    Detects options one per line ("(A) 3", "A. 3", "A: 3", "A) 3"), inline
    ("(A) 3 (B) 4", "A. 3  B. 4", two per line), and "Choices:" blocks whose
    lines may be unlettered (then lettered in order).
    """
    if not question:
        return None
    markers = list(_OPT_MARKER_RE.finditer(question))
    # Drop runs whose "A." is mid-sentence ("... point A. Then B. ...").
    while markers:
        run = _consecutive_run(markers)
        if not run:
            break
        if _plausible_first_marker(question, run[0]):
            ends = [m.start() for m in run[1:]]
            line_end = question.find("\n", run[-1].end())
            ends.append(len(question) if line_end == -1 else line_end)
            options = [_strip_option(question[m.end() : e]) for m, e in zip(run, ends, strict=True)]
            if all(options):
                return options
        markers = [m for m in markers if m is not run[0]]

    # "Choices:" followed by unlettered lines.
    lines = question.splitlines()
    for idx, line in enumerate(lines):
        header = _CHOICES_HEADER_RE.match(line)
        if header and not line[header.end() :].strip():
            block: list[str] = []
            for follow in lines[idx + 1 :]:
                if not follow.strip():
                    if block:
                        break
                    continue
                block.append(follow.strip())
            if 2 <= len(block) <= len(_LETTERS):
                return block
    return None


def _letter_set(options: list[str] | None) -> str:
    return _LETTERS[: len(options)] if options else "ABCDE"


def _choice_patterns(letters: str) -> list[re.Pattern[str]]:
    cls = f"[{letters}]"
    cls_any = f"[{letters}{letters.lower()}]"
    # Keywords are case-insensitive, the letter is not: "the answer is a triangle" is no choice.
    return [
        # \boxed{B}, \boxed{(B)}, \boxed{B. 12}, \boxed{\text{B}}
        re.compile(rf"\\boxed\s*\{{\s*(?:\\text(?:bf)?\{{)?\s*\(?({cls_any})\)?(?:[\s.:)}}]|$)"),
        # "the answer is (B)", "Answer: option B"
        re.compile(
            rf"(?i:answer)(?:\s+(?i:is|should\s+be|would\s+be|will\s+be))?\s*[:：]?\s*"
            rf"(?i:option\s*|choice\s*)?[*\s]*\(?({cls})\)?(?![A-Za-z0-9])"
        ),
        # "答案是B", "故选C"
        re.compile(rf"(?:答案|选择|应选|故选|选)\s*(?:是|为|:|：)?\s*[(（]?({cls})(?![A-Za-z])"),
        # Weaker: "correct option is B", "I choose B", "选项：(D)" (options are also discussed in passing).
        re.compile(
            rf"(?i:option|choice|choose|select|pick|选项)(?:\s+(?i:is|should\s+be|would\s+be))?\s*[:：]?"
            rf"[*\s]*[(（]?({cls})[)）]?(?![A-Za-z0-9])"
        ),
    ]


@lru_cache(maxsize=16)
def _compiled_choice_patterns(letters: str) -> tuple[re.Pattern[str], ...]:
    return tuple(_choice_patterns(letters))


def extract_choice(text: str | None, options: list[str] | None = None) -> str | None:
    """Return the chosen option letter (upper case) from a path or answer, else None.

    Tries, in order: ``\\boxed{B}``; "answer is (B)" style phrases (last one
    wins); a bare answer "B" / "(B)" / "B." / "**B**"; the final answer text
    equal (or mathematically equivalent) to exactly one option; the last "(B)"
    in the final line.  Bare letters must be upper case so the article "a" is
    not read as option A.
    """
    if not text or not text.strip():
        return None
    letters = _letter_set(options)
    for pattern in _compiled_choice_patterns(letters):
        matches = list(pattern.finditer(text))
        if matches:
            last = matches[-1]
            # "The answer is B or C": two options named, so none is chosen.
            if _ANOTHER_LETTER_RE.match(text, last.end()):
                return None
            return last.group(1).upper()

    stripped = text.strip().strip("*$ ").strip()
    # A whole answer of one letter ("b", "(B)", "B.") may be lower case; longer text needs "B." / "(B)".
    if re.fullmatch(rf"\(?([{letters}])\)?\.?", stripped, re.IGNORECASE):
        return stripped.strip("(). ").upper()
    # "B. 12", "(B) 12", and MathVerse's own "B:12" (no space after the colon).
    bare = re.fullmatch(rf"\(?\s*([{letters}])\s*\)?\s*(?:[.:：)].*|\s.*)?", stripped, re.DOTALL)
    if bare and re.match(rf"\(?[{letters}]\s*[).:：]", stripped):
        return bare.group(1)

    if options:
        # A whole short reply may be the option's value ("Therefore x = 3/4."); a longer one or a
        # chain of equations is not handed to math-verify, which would read some number out of it.
        short = "\n" not in stripped and len(stripped) <= 80 and stripped.count("=") <= 1
        answer = extract_final_answer(text) or (stripped if short else None)
        if answer:
            letter = match_option_text(answer, options)
            if letter:
                return letter

    last_line = stripped.splitlines()[-1] if stripped else ""
    paren = re.findall(rf"\(([{letters}])\)", last_line)
    if paren:
        return paren[-1]
    return None


_ANOTHER_LETTER_RE = re.compile(r"[)）]?\s*(?:or|and|/|,)\s*[(（]?[A-H](?![A-Za-z0-9])", re.IGNORECASE)


def match_option_text(answer: str, options: list[str]) -> str | None:
    """Letter of the single option whose text equals ``answer`` (string, then math).

    Both sides are normalised first, so "5\\sqrt{2}" matches the option "5√2" and "145^\\circ" "145°".
    """
    answer = strip_remark(answer)
    norm = normalize_answer(answer)
    hits = [i for i, opt in enumerate(options) if normalize_answer(opt) == norm and norm]
    if len(hits) == 1:
        return _LETTERS[hits[0]]
    hits = [i for i, opt in enumerate(options) if _math_equal(opt, answer)]
    if len(hits) == 1:
        return _LETTERS[hits[0]]
    return None


def _reference_letter(reference: str, options: list[str] | None) -> str | None:
    """Reference given as a letter ("B", "(B)", "B.") or as one option's text."""
    ref = reference.strip().strip("*$").strip()
    boxed = _last_boxed(ref)
    if boxed is not None:
        ref = boxed
    letters = _letter_set(options)
    m = re.fullmatch(rf"\(?\s*([{letters}{letters.lower()}])\s*\)?\s*[.:)]?", ref)
    if m:
        return m.group(1).upper()
    if options:
        return match_option_text(ref, options)
    return None


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
    boxed = _last_boxed(s)
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
def _math_equal(reference: str, predicted: str) -> bool:
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


def answers_match(predicted: str | None, reference: str, question: str | None = None) -> bool:
    """True if ``predicted`` is equivalent to ``reference``.

    Multiple choice (options detected in ``question``, or a letter reference)
    compares letters; the reference may be a letter or an option's text.
    Otherwise math-verify decides (numbers, fractions, roots, percentages,
    units, intervals, sets, equations), falling back to normalised string or
    numeric comparison.  Word answers ("yes", "red") are compared as strings,
    since sympy would parse them as commutative products (red == der).
    """
    if predicted is None or not predicted.strip() or not reference or not reference.strip():
        return False
    options = is_choice_question(question) if question else None
    ref_letter = _reference_letter(reference, options)
    if options and ref_letter:
        pred_letter = extract_choice(predicted, options)
        if pred_letter is not None:
            return pred_letter == ref_letter
        # No letter: the model may have written the option's value instead.
        return _math_equal(options[_LETTERS.index(ref_letter)], predicted)
    if ref_letter and not options and re.fullmatch(r"\(?[A-E]\)?\.?", reference.strip()):
        pred_letter = extract_choice(predicted, None)
        if pred_letter is not None:
            return pred_letter == ref_letter

    norm_pred, norm_ref = normalize_answer(predicted), normalize_answer(reference)
    if norm_pred and norm_pred == norm_ref:
        return True
    if _is_wordy(predicted) or _is_wordy(reference):
        return False
    if _numbers_equal(norm_pred, norm_ref):
        return True
    return _math_equal(_without_unit(reference), _without_unit(predicted))


def _without_unit(answer: str) -> str:
    """The answer without a trailing remark or unit, for math-verify ("12\\pi \\text{ cm}^2" -> "12\\pi")."""
    s = strip_remark(unicode_math_to_latex(answer.strip()))
    unwrapped = _TEXT_CMD_RE.sub(r" \1", s).strip()
    bare = _TRAILING_UNIT_RE.sub("", unwrapped.rstrip("$").rstrip()).strip()
    return bare if bare and bare != unwrapped.rstrip("$").rstrip() else s


def check_path(path_text: str, reference: str, question: str | None = None) -> RuleCheck:
    """Extract the final answer of a reasoning path and compare it with ``reference``."""
    options = is_choice_question(question) if question else None
    extracted = extract_final_answer(path_text)
    if options:
        letter = extract_choice(extracted, options) if extracted else None
        if letter is None:
            letter = extract_choice(path_text, options)
        if letter is not None:
            extracted = letter
    if extracted is None:
        return RuleCheck(correct=False, extracted=None, reason="no final answer found")
    if answers_match(extracted, reference, question):
        return RuleCheck(correct=True, extracted=extracted, reason="match")
    return RuleCheck(correct=False, extracted=extracted, reason=f"mismatch: got {extracted}, expected {reference}")
