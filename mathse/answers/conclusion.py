"""The answer a response concludes with in its last sentence, when it marks none.

Models often end with a plain sentence instead of ``\\boxed{}`` or "the answer is": "The number
missing in the sequence is 14.", "Luca needs $1.45.", "So AB = 5√2." (the first two are
MathVista's own answer-extraction examples). A careful grader reads the value that sentence
concludes with; so does `read_conclusion`. It reads only the final sentence and gives up (None)
whenever the reading is not unambiguous, so that no wrong answer is ever passed:

* hedges and conditions ("14 or 15", "maybe", "depending on", "not sure"), a question;
* the concluding value is followed by another value ("peaks at 12.5 in 2019");
* no "is / are / = / needs / leaves ..." introduces a value and the sentence holds several;
* a negated value ("is not 14").

The value read is the one after the last such cue: a number with its unit words dropped
("7 years"), a formula or equation ("y = 2x + 1"; in "11 + 3 = 14" the result), an interval or
bracketed list, a list written out ("2 and 5" -> "2, 5"), or for multiple choice an option letter,
"Yes"/"No" opening the sentence, or the one option whose text the sentence names.
"""

from __future__ import annotations

import re

from mathse.answers.equivalence import unicode_math_to_latex
from mathse.answers.extraction import match_option_text

__all__ = ["final_sentence", "read_conclusion", "read_conclusion_choice"]

# Closing pleasantries after the answer are not the conclusion.
_CLOSING_RE = re.compile(
    r"^(?:i\s+hope|hope\s+(?:this|it)|let\s+me\s+know|feel\s+free|happy\s+to\s+help|good\s+luck)", re.IGNORECASE
)
_HEDGE_RE = re.compile(
    r"\b(?:or|either|neither|nor|maybe|perhaps|possibly|probably|might|could|guess|unsure|not\s+sure|"
    r"cannot|can't|unclear|hard\s+to\s+tell|impossible|if|unless|assuming|depending|whether)\b",
    re.IGNORECASE,
)
_NEGATION_RE = re.compile(r"\b(?:not|no|never|isn't|aren't|wasn't|doesn't)\b|n't\b", re.IGNORECASE)
# Words and signs after which the sentence states its value ("is 14", "= 14", "needs $1.45").
_CUE_RE = re.compile(
    r"\b(?:is|are|was|were|be|equals?|gives?|gets?|get|leaves?|needs?|makes?|yields?|reaches|"
    r"measures?|of|at|on)\b|(?<![<>!\\])=|≈|\\approx\b|:(?=\s)",
    re.IGNORECASE,
)
# Words a value may open with ("is about 7", "a total of 3", "equal to 5", "option C").
_FILLERS = frozenset((
    "a", "an", "the", "about", "approximately", "approx", "around", "roughly", "nearly", "almost", "exactly",
    "only", "just", "equal", "to", "total", "of", "at", "on", "option", "choice",
))  # fmt: skip
# Words after a value that change its meaning ("14 less than x", "7 but ...").
_BLOCKERS = frozenset(
    ("not", "but", "than", "less", "more", "times", "plus", "minus", "except", "instead", "rather", "and", "or")
)
_SETUP_RE = re.compile(r"(?:let|suppose|assume|denote|given|we\s+know|recall)\b", re.IGNORECASE)
_CONDITIONS = frozenset(("where", "with", "for", "when", "whenever", "let", "given", "suppose", "assume"))
_CONNECTIVES_RE = re.compile(r"^(?:so|thus|hence|therefore|then|finally|overall|in\s+total)\b[,:]?\s*", re.IGNORECASE)
_WORD_RE = re.compile(r"[A-Za-z]*[a-z][A-Za-z]*(?:'s)?(?:\^\{?[23]\}?)?")
_LATEX_CMD_RE = re.compile(r"\\[A-Za-z]+")
_TEXT_WRAP_RE = re.compile(r"\\(?:text|textbf|textit|textrm|mathrm|mathbf|mbox|operatorname)\s*\{([^{}]*)\}")
# A parenthetical holding words or a calculation is a remark: "is 14 (since 11 + 3 = 14)".
# Not "(x + 1)^2": the parenthesis must stand alone.
_REMARK_RE = re.compile(r"\s+\((?=[^()]*(?:(?<![\\A-Za-z])[A-Za-z]{2,}|[=+]))[^()]*\)(?=[\s.,;:!?]|$)")


def final_sentence(text: str) -> str | None:
    """The last sentence of the response (closing pleasantries skipped), markdown stripped."""
    for line in reversed(text.strip().splitlines()):
        sentences = [s for s in re.split(r"(?<=[.!?。])\s+(?=\S)", line.strip()) if s.strip("*#-> \t")]
        while sentences and _CLOSING_RE.match(sentences[-1].strip("*#-> \t")):
            sentences.pop()
        if sentences:
            return sentences[-1].strip().strip("*#-> \t").replace("**", "").replace("__", "").strip()
    return None


def _clean(sentence: str) -> str:
    """Math delimiters, text wrappers and remarks out; Unicode math as LaTeX; end punctuation off."""
    s = sentence
    for delimiter in ("$$", "\\$", "$", "\\(", "\\)", "\\[", "\\]"):
        s = s.replace(delimiter, " ")
    for _ in range(2):
        s = _TEXT_WRAP_RE.sub(r" \1", s)
    s = _REMARK_RE.sub(" ", s)
    s = unicode_math_to_latex(s)
    s = re.sub(r"\\[,;:! ]|\\quad|\\qquad|\\left|\\right|\\displaystyle", " ", s)
    return " ".join(s.split()).rstrip(".!。 ").strip()


def _is_word(token: str) -> bool:
    return _WORD_RE.fullmatch(token.rstrip(",;:.")) is not None


def _has_value(token: str) -> bool:
    return bool(re.search(r"\d|\\(?:pi|sqrt|frac|infty)", token))


def _is_constant(expr: str) -> bool:
    """No variable in it: "12\\pi", "\\frac{5}{2}", "145^{\\circ}" are constants; "2x + 1" is not."""
    return _has_value(expr) and not re.search(r"[A-Za-z]", _LATEX_CMD_RE.sub("", expr))


def _tail_value(tail: str) -> str | None:
    """The value that opens `tail` when only words (units, nouns) follow it: "7 years" -> "7"."""
    tokens = tail.split()
    while tokens and tokens[0].lower().rstrip(",:") in _FILLERS:
        tokens.pop(0)
    run: list[str] = []
    items: list[str] = []  # "2, 5 and 8": a list written out
    i = 0
    while i < len(tokens):
        token = tokens[i]
        if not _is_word(token):
            run.append(token)
            i += 1
            continue
        if token.lower() == "and" and run and i + 1 < len(tokens) and _has_value(tokens[i + 1]):
            items.append(" ".join(run).rstrip(","))
            run = []
            i += 1
            continue
        break
    rest = tokens[i:]
    if not run or any(not _is_word(t) or t.lower().rstrip(",;:.") in _BLOCKERS for t in rest):
        return None
    value = " ".join(run).rstrip(",;:").strip()
    if items:
        parts = [p.strip() for item in [*items, value] for p in item.split(",") if p.strip()]
        return ", ".join(parts) if all(_is_constant(p) for p in parts) else None
    return value


def _after_equals(value: str) -> str:
    """In "11 + 3 = 14" the result; "y = 2x + 1" stays an equation."""
    parts = re.split(r"(?<![<>!\\])=|\\approx", value)
    rhs = parts[-1].strip()
    return rhs if len(parts) > 1 and _is_constant(rhs) else value


def _cued_value(sentence: str) -> tuple[str | None, bool]:
    """(value after the last cue, whether a cue was found)."""
    cues = list(_CUE_RE.finditer(sentence))
    if not cues:
        return None, False
    last = cues[-1]
    head = sentence[: last.start()].split()
    # "Let x = 14." / "the area is 2x, where x = 3": a definition or a condition, not the conclusion.
    if last.group(0) == "=" and len(head) >= 2 and head[-2].lower() in _CONDITIONS:
        return None, True
    if _parallel_statement(sentence[: last.start()]):
        return None, True
    value = _tail_value(sentence[last.end() :])
    if value is None:
        return None, True
    if last.group(0) == "=" and not _is_constant(value):
        # "Hence y = 2x + 1": the equation, when its left side is one variable or f(x).
        lhs = sentence[: last.start()].split()
        if lhs and re.fullmatch(r"[A-Za-z](?:\([A-Za-z]\))?", lhs[-1]):
            return f"{lhs[-1]} = {value}", True
        return None, True
    return _after_equals(value), True


def _parallel_statement(head: str) -> bool:
    """ "The red one is 4.5 cm and the blue one is ...": two values stated side by side, none concluded.

    A clause joined by "and" / "but" / "while" that states a value of its own makes the sentence
    ambiguous, unless a "so" / "hence" / "which" after it marks the last value as the conclusion.
    """
    joins = list(re.finditer(r"\b(?:and|but|while|whereas)\b", head, re.IGNORECASE))
    if not joins:
        return False
    before, after = head[: joins[-1].start()], head[joins[-1].end() :]
    if re.search(r"\b(?:so|thus|hence|therefore|which|i\.e\.|giving)\b", after, re.IGNORECASE):
        return False
    return any(_tail_value(before[cue.end() :]) for cue in _CUE_RE.finditer(before))


def _sole_value(sentence: str) -> str | None:
    """The only value in a sentence without a cue ("**14**", "Counting again, I find 13 triangles")."""
    values = [t.rstrip(",;:.") for t in sentence.split() if not _is_word(t) and _has_value(t)]
    return values[0] if len(values) == 1 else None


# A longer "sentence" is a run-on paragraph (or degenerate output), not a conclusion.
_MAX_SENTENCE_CHARS = 600


def _readable(sentence: str | None) -> str | None:
    if not sentence or len(sentence) > _MAX_SENTENCE_CHARS or not sentence.isprintable():
        return None
    if "\ufffd" in sentence or sentence.rstrip().endswith("?"):  # garbled output, a question
        return None
    if _HEDGE_RE.search(sentence) or _SETUP_RE.match(sentence.lstrip("*# ")):
        return None
    return _clean(sentence)


def read_conclusion(text: str | None) -> str | None:
    """The value the final sentence concludes with, or None when that is not unambiguous."""
    sentence = _readable(final_sentence(text or ""))
    if not sentence:
        return None
    value, _ = _cued_value(sentence)
    if value is not None:
        return value
    if _NEGATION_RE.search(sentence):
        return None
    body = _CONNECTIVES_RE.sub("", sentence)
    return _sole_value(body)


def read_conclusion_choice(text: str | None, options: list[str], letters: str) -> str | None:
    """For multiple choice: an option letter, else the value concluded with (scored as text), else None.

    Read from the final sentence: "So the correct cube is C." / "... is (C)"; "No, ..." when an
    option is Yes/No; a value equal to one option's text ("so AB = 5√2"); the one option whose
    text the sentence names ("So the circle has the most lines of symmetry.").
    """
    raw = final_sentence(text or "")
    sentence = _readable(raw)
    if not sentence:
        return None
    alone = re.fullmatch(rf"\(?([{letters}])\)?", sentence)  # a last line "**B**"
    if alone:
        return alone.group(1)
    opening = re.match(r"(yes|no)\b\s*[,.!;:]", sentence, re.IGNORECASE)
    if opening:
        return match_option_text(opening.group(1).lower(), options) if options else None
    value, _ = _cued_value(sentence)
    if value is None and not _NEGATION_RE.search(sentence):
        value = _sole_value(_CONNECTIVES_RE.sub("", sentence))
    if value is not None:
        letter = re.fullmatch(rf"\(?([{letters}])\)?", value)
        if letter:
            return letter.group(1)
        return (match_option_text(value, options) if options else None) or value
    if _NEGATION_RE.search(sentence):
        return None
    return _named_option(sentence, options)


def _named_option(sentence: str, options: list[str]) -> str | None:
    """The letter of the single word option the sentence names ("... on a Thursday")."""
    named = []
    for index, option in enumerate(options):
        text = option.strip().strip("$").strip()
        if len(text) < 2 or not re.fullmatch(r"[A-Za-z][A-Za-z '\-]*", text):
            continue  # only word options; numbers are read as values
        if re.search(rf"(?<![A-Za-z]){re.escape(text)}(?![A-Za-z])", sentence, re.IGNORECASE):
            named.append((index, text.lower()))
    # "equilateral triangle" names "triangle" too: keep options not contained in another named one.
    kept = [i for i, t in named if not any(t != u and t in u for _, u in named)]
    return "ABCDEFGH"[kept[0]] if len(kept) == 1 else None
