"""Final-answer extraction and multiple choice: the rule-based checker of a reasoning path.

This module finds the answer in a reasoning path (``\\boxed{}``, "The final answer is ..."),
detects multiple-choice questions and the chosen letter, and decides whether a path's answer
matches the reference (`answers_match`, `check_path`). Comparing two answer values
(normalisation, math-verify, its thread-safety guards) is `mathse.answers.equivalence`.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from functools import lru_cache

from mathse.answers.equivalence import last_boxed, math_equal, normalize_answer, strip_remark, values_match

__all__ = [
    "RuleCheck",
    "answers_match",
    "check_path",
    "extract_choice",
    "extract_final_answer",
    "is_choice_question",
    "match_option_text",
]


@dataclass(frozen=True)
class RuleCheck:
    """Outcome of checking one reasoning path against the reference answer."""

    correct: bool
    extracted: str | None
    reason: str


# --------------------------------------------------------------------------- extraction

_FINAL_LINE_RES = (
    # Most specific first; for each pattern the last occurrence in the text wins.
    re.compile(r"final\s+answer\s*(?:is|:|：)\s*:?\s*(?P<ans>.+)", re.IGNORECASE),
    re.compile(r"(?:最终答案|答案)\s*(?:是|为|:|：)\s*(?P<ans>.+)"),
    re.compile(r"(?:^|\n)\s*#{4}\s*(?P<ans>\S.*)"),
    re.compile(r"(?:^|[\s*])answer\s*(?:is|:|：)\s*:?\s*(?P<ans>.+)", re.IGNORECASE),
)


def _clean_answer(ans: str) -> str:
    """Trim markdown, math delimiters and sentence punctuation around an answer."""
    ans = ans.strip()
    boxed = last_boxed(ans)
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


def extract_final_answer(text: str) -> str | None:
    """Return the path's final answer: the last ``\\boxed{...}``, else a final-answer line.

    Recognised lines: "The final answer is X", "Final answer: X", "Answer: X",
    "The answer is X", "答案：X" / "答案是X", "#### X".  Returns None when absent.
    """
    if not text:
        return None
    boxed = last_boxed(text)
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

    stripped = _unwrap_text(text.strip().strip("*$ ").strip())
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


_TEXT_WRAPPER_RE = re.compile(r"\\(?:text|textbf|textrm|mathrm|mathbf|mbox)\s*\{([^{}]*)\}")
_LETTER_ONLY_RE = re.compile(r"\(?\s*[A-H]\s*\)?\.?")


def _unwrap_text(answer: str) -> str:
    """``\\text{(B)}`` -> "(B)": LaTeX text wrappers around the whole answer dropped."""
    inner = answer
    while (m := _TEXT_WRAPPER_RE.fullmatch(inner.strip().strip("$").strip())) is not None:
        inner = m.group(1).strip()
    return inner if inner != answer.strip().strip("$").strip() else answer


_ANOTHER_LETTER_RE = re.compile(r"[)）]?\s*(?:or|and|/|,)\s*[(（]?[A-H](?![A-Za-z0-9])", re.IGNORECASE)


def match_option_text(answer: str, options: list[str]) -> str | None:
    """Letter of the single option whose text equals ``answer`` (string, then math).

    Both sides are normalised first, so "5\\sqrt{2}" matches the option "5√2" and "145^\\circ" "145°".
    """
    answer = strip_remark(answer)
    if _LETTER_ONLY_RE.fullmatch(_unwrap_text(answer).strip()):
        # A stated letter is that letter: math-verify would call "(B)" equal to an option "b".
        letter = _unwrap_text(answer).strip().strip("(). ")
        return letter if letter in _LETTERS[: len(options)] else None
    norm = normalize_answer(answer)
    hits = [i for i, opt in enumerate(options) if normalize_answer(opt) == norm and norm]
    if len(hits) == 1:
        return _LETTERS[hits[0]]
    hits = [i for i, opt in enumerate(options) if math_equal(opt, answer)]
    if len(hits) == 1:
        return _LETTERS[hits[0]]
    return None


def _reference_letter(reference: str, options: list[str] | None) -> str | None:
    """Reference given as a letter ("B", "(B)", "B.") or as one option's text."""
    ref = reference.strip().strip("*$").strip()
    boxed = last_boxed(ref)
    if boxed is not None:
        ref = boxed
    letters = _letter_set(options)
    m = re.fullmatch(rf"\(?\s*([{letters}{letters.lower()}])\s*\)?\s*[.:)]?", ref)
    if m:
        return m.group(1).upper()
    if options:
        return match_option_text(ref, options)
    return None


# --------------------------------------------------------------------------- answers_match


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
        return math_equal(options[_LETTERS.index(ref_letter)], predicted)
    if ref_letter and not options and re.fullmatch(r"\(?[A-E]\)?\.?", reference.strip()):
        pred_letter = extract_choice(predicted, None)
        if pred_letter is not None:
            return pred_letter == ref_letter

    return values_match(predicted, reference)


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
