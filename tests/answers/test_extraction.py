"""Final-answer extraction, multiple choice and answer equivalence (math-verify backed)."""

from __future__ import annotations

import threading
import time
from concurrent.futures import ThreadPoolExecutor

import pytest

from mathse.answers.equivalence import normalize_answer, strip_remark, unicode_math_to_latex
from mathse.answers.extraction import (
    RuleCheck,
    answers_match,
    check_path,
    extract_choice,
    extract_final_answer,
    is_choice_question,
    match_option_text,
)

# --------------------------------------------------------------------------- extraction


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("Step 1: x=2.\nThe final answer is $\\boxed{\\frac{1}{2}}$.", "\\frac{1}{2}"),
        ("So $\\boxed{x = \\{1, 2\\}}$ first, but then \\boxed{3}", "3"),  # last box wins
        ("\\boxed{\\frac{\\sqrt{3}}{2}}", "\\frac{\\sqrt{3}}{2}"),  # nested braces
        ("\\boxed{\\{1,2\\}}", "\\{1,2\\}"),  # escaped braces do not close the box
        ("Final answer: 12 cm.", "12 cm"),
        ("The final answer is 7. I hope it is correct.", "7"),
        ("**Answer:** $42$", "42"),
        ("Answer: (C)", "(C)"),
        ("The answer is 5 because 2 + 3 = 5.", "5"),
        ("The answer is 3.5. Done.", "3.5"),
        ("答案：15", "15"),
        ("所以答案是 7。", "7"),
        ("#### 18", "18"),
        ("Final answer: 14 (8 small, 4 medium, 2 large)", "14"),  # a remark after the answer
        ("The answer is 12π (about 37.7).", "12π"),
        ("Answer: 3\nLater the final answer is 4", "4"),  # "final answer" beats "answer"
        ("no answer here", None),
        ("\\boxed{\\frac{1}{2", None),  # truncated box is not an answer
        ("", None),
    ],
)
def test_extract_final_answer(text: str, expected: str | None) -> None:
    assert extract_final_answer(text) == expected


# --------------------------------------------------------------------------- multiple choice

MC_QUESTION = "Which number is the largest?\n(A) 1/2\n(B) 3/4\n(C) 5\n(D) 7"


@pytest.mark.parametrize(
    ("question", "expected"),
    [
        (MC_QUESTION, ["1/2", "3/4", "5", "7"]),
        ("Pick one: (A) 1/2 (B) 3/4 (C) 5 (D) 7", ["1/2", "3/4", "5", "7"]),
        ("Find x.\nA. 3  B. 4\nC. 5  D. 6", ["3", "4", "5", "6"]),
        ("Question: how many?\nChoices:\nA:5\nB:6\nC:7", ["5", "6", "7"]),
        ("Choices: A: 1 B: 2 C: 3", ["1", "2", "3"]),
        ("Hint: answer with the option letter.\nChoices:\n12\n14\n16\n\nThanks", ["12", "14", "16"]),
        ("如图，求∠1的度数。\nA．30°\nB．45°\nC．60°\nD．90°", ["30°", "45°", "60°", "90°"]),
        ("What is 2 + 2?", None),
        ("Point A. Then B. What is the distance?", None),  # mid-sentence letters are not options
        ("Only (A) 3 is listed", None),  # one option is not a choice question
        ("", None),
    ],
)
def test_is_choice_question(question: str, expected: list[str] | None) -> None:
    assert is_choice_question(question) == expected


OPTIONS = ["1/2", "3/4", "5", "7"]


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("The answer is (B).", "B"),
        ("\\boxed{C}", "C"),
        ("$\\boxed{(D)}$", "D"),
        ("\\boxed{\\text{A}}", "A"),
        ("B", "B"),
        ("(D)", "D"),
        ("**C**", "C"),
        ("D. 7", "D"),
        ("So the correct option is C.", "C"),
        ("答案是B", "B"),
        ("故选：D", "D"),
        ("Option A: 1/2 is small. The answer is D. Double-check option A again.", "D"),  # answer beats option
        ("Therefore x = 3/4.", "B"),  # option text
        ("The answer is 0.75", "B"),  # option value, mathematically
        ("b", "B"),  # a whole answer of one letter may be lower case
        ("the answer is a triangle", None),  # the article "a" is no option
        ("I think 9", None),
        ("", None),
    ],
)
def test_extract_choice(text: str, expected: str | None) -> None:
    assert extract_choice(text, OPTIONS) == expected


def test_extract_choice_mathverse_format_and_two_letters() -> None:
    assert extract_choice("B:40°", ["30°", "40°", "50°", "60°"]) == "B"  # MathVerse: no space after the colon
    assert extract_choice("Answer: B:40°", ["30°", "40°", "50°", "60°"]) == "B"
    assert extract_choice("The answer is B or C.", OPTIONS) is None  # two options named: none chosen
    assert extract_choice("The answer is (B) and (C)", OPTIONS) is None
    # A chain of equations is not handed whole to math-verify (it read "5" out of this one).
    assert extract_choice("AB² = 25 + 25 = 50, so AB = 5√2.", ["5", "5√2", "10", "10√2"]) is None


@pytest.mark.parametrize(
    ("text", "latex"),
    [
        ("5√2", "5\\sqrt{2}"),
        ("3√{3}", "3\\sqrt{3}"),  # MathVerse's options
        ("√(25 − 16)", "\\sqrt{25 - 16}"),
        ("12π", "12\\pi"),
        ("60°", "60^{\\circ}"),
        ("(-∞, 2]", "(-\\infty, 2]"),
        ("6²", "6^{2}"),
        ("\\dfrac{5}{2}", "\\frac{5}{2}"),
    ],
)
def test_unicode_math_to_latex(text: str, latex: str) -> None:
    assert unicode_math_to_latex(text) == latex


def test_option_matching_across_unicode_and_latex() -> None:
    assert match_option_text("5\\sqrt{2}", ["5", "5√2", "10", "10√2"]) == "B"
    assert match_option_text("\\sqrt{27}", ["3", "3√{3}", "6", "6√{3}"]) == "B"
    assert match_option_text("145^\\circ", ["135°", "140°", "145°", "150°"]) == "C"
    assert match_option_text("4π", ["2π", "4π", "8π"]) == "B"


def test_strip_remark() -> None:
    assert strip_remark("14 (since 11 + 3 = 14)") == "14"
    assert strip_remark("12π (about 37.7)") == "12π"
    assert strip_remark("(1, 2)") == "(1, 2)"  # an interval, not a remark
    assert strip_remark("x \\in (1, 2)") == "x \\in (1, 2)"
    assert strip_remark("5 + (2 + 3)") == "5 + (2 + 3)"  # part of the expression
    assert strip_remark("14 (B)") == "14 (B)"


def test_extract_choice_respects_option_count() -> None:
    assert extract_choice("The answer is E", ["1", "2", "3"]) is None
    assert extract_choice("The answer is E", None) == "E"


@pytest.mark.parametrize(
    ("predicted", "reference", "expected"),
    [
        ("B", "B", True),
        ("(B)", "B", True),
        ("C", "B", False),
        ("3/4", "B", True),  # option text against a letter reference
        ("0.75", "B", True),
        ("B", "3/4", True),  # reference given as the option's text
        ("The answer is (D)", "7", True),
        ("5", "D", False),
        ("\\boxed{D}", "(D)", True),
        ("b", "B", True),  # an answer that is just a lower-case letter
    ],
)
def test_answers_match_multiple_choice(predicted: str, reference: str, expected: bool) -> None:
    assert answers_match(predicted, reference, MC_QUESTION) is expected


def test_letter_reference_without_question() -> None:
    assert answers_match("(C)", "C")
    assert not answers_match("D", "C")


# --------------------------------------------------------------------------- equivalence


@pytest.mark.parametrize(
    ("predicted", "reference"),
    [
        ("7", "7.0"),
        ("7.00", "7"),
        ("1,000", "1000"),
        ("−3", "-3"),
        ("0.5", "\\frac{1}{2}"),
        ("\\dfrac{1}{2}", "1/2"),
        ("\\frac12", "0.5"),
        ("\\sqrt{2}", "\\sqrt 2"),
        ("2\\sqrt{2}", "\\sqrt{8}"),
        ("\\frac{\\sqrt{3}}{2}", "\\frac{1}{2}\\sqrt{3}"),
        ("50%", "0.5"),
        ("50\\%", "50"),
        ("12.5%", "0.125"),
        ("5 cm", "5"),
        ("5\\text{ cm}", "5"),
        ("6.0 cm^2", "6"),
        ("\\text{5 apples}", "5"),
        ("30^\\circ", "30"),
        ("30°", "30"),
        ("\\$5", "5"),
        ("$5$", "5"),
        ("[1,2]", "[1, 2]"),
        ("(-\\infty, 2)", "(-\\infty,2)"),
        ("\\{1,2\\}", "\\{2,1\\}"),
        ("x=3", "3"),
        ("x^2+2x+1", "(x+1)^2"),
        ("1.5\\times10^{3}", "1500"),
        ("Yes", "yes"),
        ("\\text{yes}", "yes"),
        ("Isosceles.", "isosceles"),
        ("12\\pi \\text{ cm}^2", "12\\pi"),  # a unit after a constant
        ("12π square units", "12\\pi"),
        ("1,260,000", "1260000"),
        ("1 260", "1260"),
        ("5√2", "5\\sqrt{2}"),
        ("(-∞, 2]", "(-\\infty, 2]"),
        ("14 (11 + 3)", "14"),
    ],
)
def test_equivalent_answers(predicted: str, reference: str) -> None:
    assert answers_match(predicted, reference), (predicted, reference)


@pytest.mark.parametrize(
    ("predicted", "reference"),
    [
        ("7", "8"),
        ("7.1", "7"),
        ("\\frac{1}{3}", "0.33"),
        ("3.14", "\\pi"),
        ("\\sqrt{3}", "\\sqrt{2}"),
        ("(1,2)", "[1,2]"),  # open vs closed interval
        ("\\{1,2\\}", "\\{1,3\\}"),
        ("yes", "no"),
        ("red", "der"),  # sympy would read both as the product d*e*r
        ("-5", "5"),
        ("25%", "0.5"),
        ("", "3"),
        (None, "3"),
        ("3", ""),
        ("10^{10^{10}}", "5"),  # power tower: refused before sympy, no hang
        ("(1+x)^{1000}", "5"),  # huge symbolic expansion: refused before sympy
        ("37.7", "12\\pi"),  # an approximation is not the exact answer
        ("5√3", "5\\sqrt{2}"),
        ("(-∞, 2)", "(-\\infty, 2]"),
        ("126,000", "1260000"),
    ],
)
def test_different_answers(predicted: str | None, reference: str) -> None:
    assert not answers_match(predicted, reference), (predicted, reference)


def test_normalize_answer() -> None:
    assert normalize_answer("$\\text{ 5 cm }$.") == "5"
    assert normalize_answer("\\boxed{60^{\\circ}}") == "60"
    assert normalize_answer("  Yes. ") == "yes"
    assert normalize_answer("\\left( 1, 2 \\right)") == "(1,2)"


# --------------------------------------------------------------------------- check_path


def test_check_path_reasons() -> None:
    assert check_path("Step 1: 2+2=4.\nThe final answer is $\\boxed{4}$.", "4") == RuleCheck(True, "4", "match")
    miss = check_path("So the answer is 5.", "4")
    assert miss == RuleCheck(False, "5", "mismatch: got 5, expected 4")
    assert check_path("I could not finish.", "4") == RuleCheck(False, None, "no final answer found")


def test_check_path_multiple_choice_by_letter_or_value() -> None:
    by_letter = check_path("Comparing, 7 is the largest. The answer is (D).", "D", MC_QUESTION)
    assert by_letter.correct and by_letter.extracted == "D"
    by_value = check_path("Thus the largest is \\boxed{7}", "D", MC_QUESTION)
    assert by_value.correct and by_value.extracted == "D"
    wrong = check_path("The answer is (A).", "D", MC_QUESTION)
    assert not wrong.correct and wrong.reason == "mismatch: got A, expected D"


# --------------------------------------------------------------------------- threads & speed

CASES = [
    ("7", "7.0", True),
    ("0.5", "\\frac{1}{2}", True),
    ("2\\sqrt{2}", "\\sqrt{8}", True),
    ("50%", "0.5", True),
    ("[1,2]", "[1, 2]", True),
    ("x^2+2x+1", "(x+1)^2", True),
    ("7", "8", False),
    ("(1,2)", "[1,2]", False),
    ("\\sqrt{3}", "\\sqrt{2}", False),
]


def test_thread_safe_and_same_results_as_main_thread() -> None:
    """Off the main thread math-verify must run without signal.alarm (it would raise there)."""
    work = CASES * 12
    errors: list[BaseException] = []

    def run(case: tuple[str, str, bool]) -> bool:
        try:
            assert threading.current_thread() is not threading.main_thread()
            return answers_match(case[0], case[1])
        except BaseException as exc:  # surface worker errors in the main thread
            errors.append(exc)
            raise

    with ThreadPoolExecutor(max_workers=8) as pool:
        results = list(pool.map(run, work))
    assert not errors
    assert results == [expected for _, _, expected in work]


def test_power_tower_in_worker_thread_does_not_hang() -> None:
    with ThreadPoolExecutor(max_workers=1) as pool:
        future = pool.submit(answers_match, "10^{10^{10}}", "10^{10^{10}}")
        assert future.result(timeout=10) is True  # identical strings still match
        assert pool.submit(answers_match, "10^{10^{10}}", "10^{10^{9}}").result(timeout=10) is False


def test_speed_of_answers_match() -> None:
    # Distinct values, so math-verify's small parse caches do not flatter the timing.
    work = [(f"\\frac{{{k}}}{{{k + 1}}}", f"{k}/{k + 1}") for k in range(1, 201)]
    start = time.perf_counter()
    assert all(answers_match(a, b) for a, b in work)
    per_call = (time.perf_counter() - start) / len(work)
    assert per_call < 0.05, f"{per_call * 1000:.1f} ms per answers_match"
