"""The rule scorer against a careful human grader, on realistic responses in the published layouts.

tests/data/eval_probes/: MathVista, MathVerse and MathVision records (read by the real loaders)
and 300 responses with human verdicts: answers boxed, after "the answer is", or only stated in a
final sentence, in many phrasings; wrong answers close to right ones; hedged and ambiguous ones.
"""

from __future__ import annotations

from collections import Counter
from pathlib import Path

import pytest

from mathse.answers.evalsets import EvalItem
from mathse.answers.scoring import extract_answer, score_response
from mathse.testing.eval_probes import Probe, grade_probes, load_probes

PROBES_DIR = Path(__file__).parents[1] / "data" / "eval_probes"
PROBES = load_probes(PROBES_DIR)
# Correct answers the rules do not read (they are scored wrong, never the other way round):
# a value followed by a year, two values side by side, a number word before the digit, an
# inequality given for an interval, an angle in degrees for one asked in radians, a fraction in words.
KNOWN_MISSES = {
    ("mathvista", "110", "peaks at"),
    ("mathvista", "114", "two segments named"),
    ("mathvista", "116", "number word then digit"),
    ("mathverse", "206", "inequality for interval"),
    ("mathverse", "215", "degrees for radians"),
    ("mathvision", "302", "fraction in words"),
}


def test_probe_set_is_realistic_and_balanced() -> None:
    assert len(PROBES) >= 150
    layouts = Counter(p.benchmark for p in PROBES)
    assert set(layouts) == {"mathvista", "mathverse", "mathvision"} and min(layouts.values()) >= 40
    verdicts = Counter(p.human_correct for p in PROBES)
    assert verdicts[True] >= 100 and verdicts[False] >= 70
    assert {p.item.kind for p in PROBES} == {"choice", "free"}


def test_agreement_with_human_grader() -> None:
    report = grade_probes(PROBES)
    passed = [(p.line, p.response, s.extracted) for p, s in report.wrong_passed]
    assert not passed, f"wrong answers passed: {passed}"
    assert report.agreement >= 0.95, f"agreement {report.agreement:.3f}"
    assert report.unextracted_share <= 0.05, f"correct answers not extracted: {report.unextracted_share:.3f}"


@pytest.mark.parametrize("probe", PROBES, ids=lambda p: f"{p.line}-{p.benchmark}-{p.item.id}")
def test_each_probe(probe: Probe) -> None:
    score = score_response(probe.item, probe.response)
    if (probe.benchmark, probe.item.id, probe.note) in KNOWN_MISSES:
        assert probe.human_correct and not score.correct
    else:
        assert score.correct is probe.human_correct, (probe.note, probe.response, score)


def test_bad_probe_file_names_line(tmp_path: Path) -> None:
    for name in ("mathvista.json", "mathverse.json", "mathvision.json"):
        (tmp_path / name).write_bytes((PROBES_DIR / name).read_bytes())
    (tmp_path / "responses.jsonl").write_text(
        '{"benchmark": "mathvista", "id": "101", "human": "correct", "response": "14"}\n'
        '{"benchmark": "mathvista", "id": "999", "human": "correct", "response": "14"}\n'
    )
    with pytest.raises(ValueError, match=r"responses\.jsonl:2: no mathvista record with id '999'"):
        load_probes(tmp_path)


# ---------------------------------------------------------------------------------------------
# The rule errors the probe set found, one by one


def item(answer: str, fmt: str = "mathverse", **kw: object) -> EvalItem:
    return EvalItem(id="x", question="q", images=(), answer=answer, kind="free", format=fmt, **kw)  # type: ignore[arg-type]


def choice(options: tuple[str, ...], letter: str, fmt: str = "mathverse") -> EvalItem:
    return EvalItem(
        id="c", question="q", images=(), answer=letter, kind="choice", options=options, answer_letter=letter, format=fmt
    )


ROOTS = ("3", "3√{3}", "6", "6√{3}")  # MathVerse writes options with Unicode roots
DAYS = ("Monday", "Tuesday", "Wednesday", "Thursday")


@pytest.mark.parametrize(
    ("scored", "response", "correct"),
    [
        (item("14"), "Final answer: 14 (8 small, 4 medium, 2 large)", True),  # remark after the answer
        (item("12\\pi"), "The answer is 12π (about 37.7).", True),
        (item("12\\pi"), "\\boxed{12\\pi \\text{ cm}^2}", True),  # unit after a constant
        (item("12\\pi"), "So the area is 12π square units.", True),
        (item("12\\pi"), "The area is approximately 37.7.", False),
        (item("1260"), "The sum of all numbers is 1,260.", True),  # thousands separator
        (item("60"), "\\boxed{60°}", True),
        (item("(-\\infty, 2]"), "so the answer is (-∞, 2].", True),
        (item("(-\\infty, 2]"), "The set is (-∞, 2).", False),
        (choice(ROOTS, "B"), "\\boxed{3\\sqrt{3}}", True),  # LaTeX answer, Unicode option
        (choice(ROOTS, "B"), "AC = 6 × cos30° = 3√3.", True),
        (choice(ROOTS, "B"), "AC = \\sqrt{36 - 9} = \\sqrt{27}.", True),
        (choice(ROOTS, "B"), "AC = 6√3.", False),
        (choice(("30°", "40°", "50°", "60°"), "B"), "B:40°", True),  # MathVerse's option format
        (choice(("30°", "40°", "50°", "60°"), "B"), "Answer: A:30°", False),
        (choice(("30°", "40°", "50°", "60°"), "B"), "The answer is B or C.", False),  # two options: none
        (choice(DAYS, "D", "mathvision"), "It falls on a Thursday.", True),
        (choice(DAYS, "D", "mathvision"), "Either Tuesday or Thursday.", False),
    ],
)
def test_rule_fixes(scored: EvalItem, response: str, correct: bool) -> None:
    assert score_response(scored, response).correct is correct, score_response(scored, response)


def test_mathvista_currency_and_precision() -> None:
    luca = item("1.45", "mathvista", metadata={"answer_type": "float", "precision": 2, "unit": "$"})
    assert score_response(luca, "\\boxed{\\$1.45}").correct  # "\$" used to leave a stray backslash
    assert score_response(luca, "Luca needs $1.45.").correct
    assert not score_response(luca, "The total is about $1.5.").correct
    assert extract_answer(luca, "Luca needs $1.45.") == "1.45"


def test_ambiguous_conclusions_are_not_extracted() -> None:
    for response in (
        "The pattern could be +3 or +4, so the missing number is either 14 or 15.",
        "So it is not 14.",
        "The red segment is 4.5 cm and the blue one is 3 cm.",
        "Is it 14?",
        "There are at least 12 triangles, maybe 14.",
    ):
        assert extract_answer(item("14"), response) is None, response
    assert not score_response(item("14"), "The answer is not 14.").correct


# ---------------------------------------------------------------------------------------------
# Misreadings real model output exposed (issue 26), one class at a time; the responses are made up.

PETS = ("fish", "birds", "rabbits", "cats and dogs")
SHAPES = ("circle", "square", "triangle", "hexagon")
SIDES = ("b", "2b", "b/2", "3b")  # math-verify calls the letter "(B)" equal to the option "b"
APPLES = "Each box holds 3 apples and there are 4 boxes, so there are 12 apples in total."
TABLE = "The total is 14.\n\n| colour | cubes |\n|---|---|\n| red | 6 |\n| blue | 8 |"
RECAP_LIST = "So there are 14 cubes.\n\nBreakdown:\n- red: 6\n- blue: 8"
INVENTED = "The answer is 14.\n\nQuestion: How many cubes are red?\nAnswer: 6\n\nQuestion: And blue?\nAnswer: 8"
NEXT_TURN = "The answer is 14<|im_end|>\n<|im_start|>user\nAnd blue?<|im_end|>\n<|im_start|>assistant\nThe answer is 8"


def asked(question: str, options: tuple[str, ...], letter: str) -> EvalItem:
    shown = f"Hint: Please answer.\nQuestion: {question}\nChoices:\n" + "\n".join(
        f"({'AB'[i]}) {o}" for i, o in enumerate(options)
    )
    return EvalItem(id="q", question=shown, images=(), answer=letter, kind="choice", options=options,
                    answer_letter=letter, format="mathvista")


CONTINUOUS = "Is the function continuous at x = 0?"
JUMP = "There is a jump at x = 0.\nThe function is not continuous there."
YES_NO = ("Yes", "No")
GREATER = "Is the number of red cubes greater than the number of blue spheres?"


@pytest.mark.parametrize(
    ("scored", "response", "correct"),
    [
        # A letter wrapped in LaTeX is that letter, never the option math-verify calls equal to it.
        (choice(SIDES, "A"), "The shorter side is half the longer one.\n\n$\\boxed{\\text{(B)}}$", False),
        (choice(SIDES, "B"), "Twice the short side.\n\n$\\boxed{\\textbf{(B)}}$", True),
        # A letter stated with its option early outranks other options' words later; a later other letter: none.
        (choice(PETS, "D"), "Cats and dogs (D).\nA fish tank stands in the corner of the room.", True),
        (choice(PETS, "A"), "Cats and dogs (D).\nA fish tank stands in the corner of the room.", False),
        (choice(PETS, "C"), "Cats and dogs (D).\nOn a second look the pets are rabbits, so it is C.", False),
        (choice(PETS, "D"), "Cats and dogs (D).\nOn a second look the pets are rabbits, so it is C.", False),
        # The answer is the first sentence, the rest explains it; a last sentence concluding otherwise: none.
        (item("14"), "14.\nThe figure shows three rows of four cubes and two more stacked on top.", True),
        (choice(SHAPES, "A"), "The circle.\nIt has infinitely many lines of symmetry, the square only four.", True),
        (choice(SHAPES, "B"), "The circle.\nIt has infinitely many lines of symmetry, the square only four.", False),
        (item("14"), "14.\nOn a recount, three rows of four and one on top makes 13 cubes.", False),
        (item("13"), "14.\nOn a recount, three rows of four and one on top makes 13 cubes.", False),
        # A closing pleasantry, a question to the user, a recap after the answer.
        (item("12"), APPLES + " Would you like me to explain the multiplication step?", True),
        (item("12"), APPLES + "\n\nIf you have any other questions, feel free to ask.", True),
        (item("12"), APPLES + "\n\nIn summary, we multiplied the number of boxes by the apples per box.", True),
        (item("13"), APPLES + " Let me know if you want me to check 13 as well!", False),
        # Number words; a numeral later in the same sentence is not the answer.
        (item("4"), "There are four cubes left.", True),
        (item("25"), "The class has twenty-five pupils.", True),
        (item("0"), "The answer is zero.", True),
        (item("3"), "There are four cubes left after removing 3.", False),
        (item("1"), "The red cube is one of the largest.", False),
        # A table or a recap list after the answer.
        (item("14"), TABLE, True),
        (item("8"), TABLE, False),
        (item("14"), RECAP_LIST, True),
        (item("8"), RECAP_LIST, False),
        # Invented question-and-answer pairs after the answer: the first answer to the asked question counts.
        (item("14"), INVENTED, True),
        (item("8"), INVENTED, False),
        # Raw end-of-sequence tokens.
        (item("14"), "The answer is 14</s>", True),
        (item("14"), "So there are 14 cubes.<|eot_id|>", True),
        (item("14"), "<|im_start|>assistant\nThere are 14 cubes.</s></s>", True),
        (item("14"), NEXT_TURN, True),
        (item("8"), NEXT_TURN, False),
        # Yes/No answered in words: the question's whole predicate stated, plainly or negated once.
        (asked(CONTINUOUS, YES_NO, "B"), JUMP, True),
        (asked(CONTINUOUS, YES_NO, "A"), JUMP, False),
        (asked(CONTINUOUS, YES_NO, "A"), "Both one-sided limits equal f(0).\nSo the function is continuous.", True),
        (asked(CONTINUOUS, ("Yes", "No"), "B"), "The function is continuous at x = 0, not at x = 1.", False),
        (asked(GREATER, ("Yes", "No"), "A"), "There are fewer red cubes than blue spheres.", False),
    ],
)
def test_issue_26_misreadings(scored: EvalItem, response: str, correct: bool) -> None:
    assert score_response(scored, response).correct is correct, score_response(scored, response)
