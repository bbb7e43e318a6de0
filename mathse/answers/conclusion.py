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

__all__ = [
    "final_sentence", "number_word", "read_conclusion", "read_conclusion_choice", "read_opening", "stated_letter",
]

# Closing pleasantries after the answer are not the conclusion.
_CLOSING_RE = re.compile(
    r"^(?:i\s+hope|hope\s+(?:this|it)|let\s+me\s+know|feel\s+free|happy\s+to\s+help|good\s+luck|"
    r"glad\s+to\s+help|thanks?\b|thank\s+you|you'?re\s+welcome|if\s+you\s+(?:have|need|want|would)|"
    r"(?:please\s+)?(?:do\s+)?let\s+me\s+know)",
    re.IGNORECASE,
)
# A question to the user ("Would you like me to explain ...?"), not a question about the answer.
_ASKS_USER_RE = re.compile(
    r"^(?:would|do|did|shall|should|can|could|may|is\s+there|are\s+there|any)\b.*\b(?:you|me|I|anything)\b.*\?$",
    re.IGNORECASE,
)
# A recap of the method after the answer, holding no value ("In summary, we multiplied the two counts.").
_RECAP_RE = re.compile(
    r"^(?:in\s+summary|to\s+summari[sz]e|summary|to\s+recap|in\s+short|in\s+conclusion,\s+we|"
    r"this\s+(?:problem|question|task)\s+(?:tests|uses|involves|requires|asks))\b",
    re.IGNORECASE,
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
        while sentences and _closing(sentences[-1].strip("*#-> \t")):
            sentences.pop()
        if sentences:
            return sentences[-1].strip().strip("*#-> \t").replace("**", "").replace("__", "").strip()
    return None


def _closing(sentence: str) -> bool:
    """A pleasantry, a question to the user, or a recap without a value: said after the answer."""
    if _CLOSING_RE.match(sentence) or _ASKS_USER_RE.match(sentence):
        return True
    return _RECAP_RE.match(sentence) is not None and not re.search(r"\d", sentence)


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


_UNITS = (
    "zero", "one", "two", "three", "four", "five", "six", "seven", "eight", "nine", "ten", "eleven", "twelve",
    "thirteen", "fourteen", "fifteen", "sixteen", "seventeen", "eighteen", "nineteen",
)  # fmt: skip
_TENS = {"twenty": 20, "thirty": 30, "forty": 40, "fifty": 50, "sixty": 60, "seventy": 70, "eighty": 80, "ninety": 90}


def number_word(token: str) -> str | None:
    """ "four" -> "4", "twenty-five" -> "25" (0-99); None for anything else."""
    word = token.lower().strip("*,;:.!")
    if word in _UNITS:
        return str(_UNITS.index(word))
    tens, _, unit = word.partition("-")
    if tens in _TENS and (not unit or unit in _UNITS[1:10]):
        return str(_TENS[tens] + (_UNITS.index(unit) if unit else 0))
    return None


def _tail_value(tail: str, words: bool = True) -> str | None:
    """The value that opens `tail` when only words (units, nouns) follow it: "7 years" -> "7", "four cubes" -> "4"."""
    tokens = tail.split()
    while tokens and tokens[0].lower().rstrip(",:") in _FILLERS:
        tokens.pop(0)
    # A number word opens the value ("four cubes"), not "one of them".
    if words and tokens and (word := number_word(tokens[0])) is not None and (len(tokens) < 2 or tokens[1] != "of"):
        tokens[0] = word + tokens[0][len(tokens[0].rstrip(",;:.!")) :]
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
    return any(_tail_value(before[cue.end() :], words=False) for cue in _CUE_RE.finditer(before))


def _sole_value(sentence: str) -> str | None:
    """The only value in a sentence without a cue ("**14**", "Counting again, I find 13 triangles")."""
    tokens = sentence.split()
    values = [t.rstrip(",;:.") for t in tokens if not _is_word(t) and _has_value(t)]
    # Number words count as values too ("four cubes left after removing 3" states two), "one" aside.
    words = [w for t in tokens if (w := number_word(t)) is not None and t.lower().strip(",;:.") != "one"]
    if len(values) + len(words) != 1:
        return None
    return values[0] if values else words[0]


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
    """The value the final sentence concludes with, or None when that is not unambiguous.

    A table printed after the answer is never read; a recap list after the answer (under a header
    such as "Breakdown:") gives way to the sentence before it.
    """
    text = text or ""
    trimmed, block = _without_trailing_block(text)
    if block is not None:
        value = _read_value(trimmed)
        if value is not None or block == "table":
            return value
    return _read_value(text)


def _read_value(text: str) -> str | None:
    sentence = _readable(final_sentence(text))
    if not sentence:
        return None
    value, _ = _cued_value(sentence)
    if value is not None:
        return value
    if _NEGATION_RE.search(sentence):
        return None
    body = _CONNECTIVES_RE.sub("", sentence)
    return _sole_value(body)


def read_conclusion_choice(
    text: str | None, options: list[str], letters: str, question: str | None = None, *, named: bool = True
) -> str | None:
    """For multiple choice: an option letter, else the value concluded with (scored as text), else None.

    Read from the final sentence: "So the correct cube is C." / "... is (C)"; "No, ..." when an
    option is Yes/No, or for a Yes/No question a statement of its predicate ("The function is not
    continuous there." -> No); a value equal to one option's text ("so AB = 5√2"); with `named`,
    the one option whose text the sentence names ("So the circle has the most lines of symmetry.").
    """
    text = text or ""
    trimmed, block = _without_trailing_block(text)
    if block is not None:
        got = _read_choice(trimmed, options, letters, question, named)
        if got is not None or block == "table":
            return got
    return _read_choice(text, options, letters, question, named)


def _read_choice(text: str, options: list[str], letters: str, question: str | None, named: bool) -> str | None:
    sentence = _readable(final_sentence(text))
    if not sentence:
        return None
    alone = re.fullmatch(rf"\(?([{letters}])\)?", sentence)  # a last line "**B**"
    if alone:
        return alone.group(1)
    opening = re.match(r"(yes|no)\b\s*[,.!;:]", sentence, re.IGNORECASE)
    if opening:
        return match_option_text(opening.group(1).lower(), options) if options else None
    if question and sorted(o.strip().lower() for o in options) == ["no", "yes"]:
        verdict = _yes_no_statement(sentence, question)
        if verdict is not None:
            return match_option_text(verdict, options)
    value, _ = _cued_value(sentence)
    if value is None and not _NEGATION_RE.search(sentence):
        value = _sole_value(_CONNECTIVES_RE.sub("", sentence))
    if value is not None:
        letter = re.fullmatch(rf"\(?([{letters}])\)?", value)
        if letter:
            return letter.group(1)
        return (match_option_text(value, options) if options else None) or value
    if _NEGATION_RE.search(sentence) or not named:
        return None
    return _named_option(sentence, options)


# --------------------------------------------------------------------------- after the answer

_TABLE_ROW_RE = re.compile(r"^\|.*\|$|^\|?\s*:?-{3,}")
_LIST_ITEM_RE = re.compile(r"^(?:[-*•+]|\d+[.)])\s+")
_NOT_RECAP_RE = re.compile(r"=|\b(?:so|thus|hence|therefore|total|answer|final)\b", re.IGNORECASE)


def _without_trailing_block(text: str) -> tuple[str, str | None]:
    """(text before a trailing table or recap list, "table" | "list"), or (text, None) when none ends it.

    A list counts only under a header line ending in ":" ("Breakdown:") and when no item concludes
    ("= 14", "total", "so"): a list of steps ending in the result is the reasoning itself.
    """
    lines = text.rstrip().splitlines()
    i, block = len(lines), None
    while i > 0:
        line = lines[i - 1].strip().strip("*").strip()
        if not line:
            i -= 1
        elif _TABLE_ROW_RE.match(line):
            block, i = "table", i - 1
        elif block != "table" and _LIST_ITEM_RE.match(line) and not _NOT_RECAP_RE.search(line):
            block, i = "list", i - 1
        else:
            break
    if block is None:
        return text, None
    header = lines[i - 1].strip().strip("*#").strip() if i > 0 else ""
    if header.endswith((":", "：")) and not re.search(r"\d", header):
        i -= 1
    elif block == "list":
        return text, None
    return "\n".join(lines[:i]), block


# --------------------------------------------------------------------------- Yes/No in words

_STOPWORDS = frozenset((
    "the", "is", "are", "was", "were", "does", "did", "do", "has", "have", "had", "can", "could", "will", "would",
    "this", "that", "there", "these", "those", "and", "for", "with", "its", "what", "which", "who", "whom", "how",
    "any", "all", "image", "figure", "shown", "picture", "graph", "diagram", "plot", "chart", "question",
))  # fmt: skip
_CONTRAST_RE = re.compile(
    r"\b(?:but|however|while|whereas|instead|rather|although|though|except|only)\b", re.IGNORECASE
)
_NEGATIONS_RE = re.compile(r"\b(?:not|no|never|none|cannot)\b|n't\b", re.IGNORECASE)
_CLAUSE_RE = re.compile(r"[,;:]|\b(?:so|thus|therefore|hence|because|since|as|and)\b", re.IGNORECASE)


def _content_words(text: str) -> set[str]:
    return {w.rstrip("s") for w in re.findall(r"[a-z]{3,}", text.lower()) if w not in _STOPWORDS}


def _asked(question: str) -> str | None:
    """The Yes/No question asked: the last sentence ending in "?" (before any Choices block)."""
    text = re.split(r"\n\s*(?:choices|options)\s*[:：]", question, flags=re.IGNORECASE)[0]
    asked = re.findall(r"[^.?!\n]*\?", text)
    return asked[-1].strip() if asked else None


def _yes_no_statement(sentence: str, question: str) -> str | None:
    """ "Yes" / "No" when the sentence states the question's whole predicate, plainly or negated once."""
    asked = _asked(question)
    if not asked or _NEGATIONS_RE.search(asked) or _CONTRAST_RE.search(sentence):
        return None
    wanted = _content_words(asked)
    if not wanted:
        return None
    # The clause stating the predicate decides ("There is no jump, so the function is continuous." is Yes).
    clauses = [c for c in _CLAUSE_RE.split(sentence) if wanted <= _content_words(c)]
    if len(clauses) != 1:
        return None
    negations = len(_NEGATIONS_RE.findall(clauses[0]))
    if negations > 1:
        return None
    return "No" if negations else "Yes"


# --------------------------------------------------------------------------- the answer stated first

_OPENING_MAX_CHARS = 60


def read_opening(text: str | None, options: list[str] | None = None) -> str | None:
    """The answer a response opens with, the rest explaining it: "14." / "The circle." on the first line.

    Free form: the whole first line is a value ("14", "14 cubes", "four"). Multiple choice: the first
    sentence is one option's text (letter returned). Only when something follows it.
    """
    lines = [line.strip() for line in (text or "").strip().splitlines() if line.strip()]
    if len(lines) < 1:
        return None
    first = lines[0].replace("**", "").strip("*#> \t")
    if options:
        head, _, rest = first.partition(". ")
        if not rest.strip() and len(lines) < 2:
            return None
        head = re.sub(r"^(?:the|a|an)\s+", "", head.strip().rstrip(".!。"), flags=re.IGNORECASE)
        if not 2 <= len(head) <= _OPENING_MAX_CHARS:
            return None
        hits = [i for i, o in enumerate(options) if o.strip().lower() == head.lower()]
        return "ABCDEFGH"[hits[0]] if len(hits) == 1 else None
    if len(lines) < 2 or len(first.split()) > 3 or first.endswith((":", "：")) or re.match(r"\d+[.)]\s*\S", lines[1]):
        return None
    if re.search(r"[=+×*/^<>]|\\(?:times|cdot|div)", first):  # a calculation step, not an answer
        return None
    if re.fullmatch(r"1[.)]", first):  # "1." opening a numbered list
        return None
    sentence = _readable(first)
    if not sentence or (_is_word(sentence.split()[0]) and number_word(sentence.split()[0]) is None):
        return None
    value = _tail_value(sentence)
    return _after_equals(value) if value is not None and _has_value(value) else None


def stated_letter(text: str | None, options: list[str], letters: str) -> str | None:
    """The one letter the response states with its option's text ("Cats and dogs (D)." / "(D) cats and dogs").

    A line naming two or more letters (the options restated, options compared) states none.
    """
    found: set[str] = set()
    for line in (text or "").splitlines():
        marks = set(re.findall(rf"\(([{letters}])\)", line))
        if len(marks) != 1:
            continue
        letter = marks.pop()
        option = options[letters.index(letter)].strip() if letters.index(letter) < len(options) else ""
        named = re.search(rf"(?<![A-Za-z]){re.escape(option)}(?![A-Za-z])", line, re.IGNORECASE)
        if len(option) < 2 or not named or _NEGATIONS_RE.search(line):
            continue
        rest = (line[: named.start()] + line[named.end() :]).replace(f"({letter})", " ")
        if len(re.findall(r"[A-Za-z]+", rest)) <= 4:  # "Cats and dogs (D).", "I pick (D) cats and dogs."
            found.add(letter)
    return found.pop() if len(found) == 1 else None


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
