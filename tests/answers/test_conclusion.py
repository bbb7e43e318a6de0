"""Reading the answer a response concludes with in its final sentence (no marker), or nothing."""

from __future__ import annotations

import random
import time

import pytest

from mathse.answers.conclusion import (
    final_sentence,
    number_word,
    read_conclusion,
    read_conclusion_choice,
    read_opening,
    stated_letter,
)


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("Each term adds 3.\nThe number missing in the sequence is 14.", "14"),  # MathVista's examples
        ("A candy costs $0.66 and another $0.79. Luca needs $1.45.", "1.45"),
        ("There are 5 parts and 3 are blue. The fraction is 0.6.", "0.6"),
        ("So the missing number is 14 (since 11 + 3 = 14).", "14"),  # remark dropped
        ("Common difference d = 3, so the missing term is 11 + 3 = 14.", "14"),  # result of the chain
        ("The age gap is 7 years.", "7"),  # unit words dropped
        ("6 - 2 - 1 = 3, which leaves a total of 3 objects.", "3"),
        ("The largest city has a population of 1,260,000.", "1,260,000"),
        ("AB² = 25 + 25 = 50, so AB = 5√2.", "5\\sqrt{2}"),  # Unicode math as LaTeX
        ("The area is $\\frac{120}{360}\\pi \\cdot 6^2 = 12\\pi \\text{ cm}^2$.", "12\\pi"),
        ("Slope $m = 2$, intercept $b = 1$. Hence $y = 2x + 1$.", "y = 2x + 1"),  # an equation stays one
        ("so the solution set is $(-\\infty, 2]$.", "(-\\infty, 2]"),
        ("Reading the axis, the two marked points are at 2 and 5.", "2, 5"),  # a list written out
        ("So the list is [2, 5].", "[2, 5]"),
        ("The expression equals (x + 1)^2.", "(x + 1)^2"),  # a parenthesis inside the answer stays
        ("Looking at the differences.\n\n**14**", "14"),
        ("After removing them, 3 objects are left.", "3"),
        ("The answer follows.\nThe total is 1260. I hope this helps!", "1260"),  # pleasantry skipped
    ],
)
def test_reads_the_concluded_value(text: str, expected: str) -> None:
    assert read_conclusion(text) == expected


@pytest.mark.parametrize(
    "text",
    [
        "The missing number is either 14 or 15.",  # hedge
        "It is 0.6 or 0.5 depending on the middle part.",
        "I am not sure, maybe 14.",
        "So it is not 14.",  # negation
        "Is the missing number 14?",  # a question
        "The blue line peaks at 12.5 in 2019.",  # another value after the concluded one
        "The red segment is 4.5 cm and the blue one is 3 cm.",  # two values side by side
        "The man is 45 and the woman 38 years old, 7 apart.",
        "Let x = 14.",  # a definition, not a conclusion
        "The area is 2x, where x = 3.",  # a condition
        "We know AB = 5 and need AC.",
        "The sequence starts at 2 and the differences seem constant. Let me check the picture again.",
        "ck\ufffdIJ\ufffdHYZrc abcd riV\x0f 24.H",  # what a random tiny model writes
        "",
    ],
)
def test_ambiguous_sentences_give_nothing(text: str) -> None:
    assert read_conclusion(text) is None


def test_final_sentence() -> None:
    assert final_sentence("First line.\nSo x = 2. Let me know if you need more help.") == "So x = 2."
    assert final_sentence("Done.\n\n**Answer follows** 3.5.") == "Answer follows 3.5."
    assert final_sentence("   ") is None


OPTIONS = ["square", "rectangle", "circle", "equilateral triangle"]


@pytest.mark.parametrize(
    ("text", "options", "expected"),
    [
        ("So the circle has the most lines of symmetry.", OPTIONS, "C"),  # option text named
        ("It is the equilateral triangle.", ["triangle", "equilateral triangle"], "B"),  # the longer option
        ("Both the square and the circle have many.", OPTIONS, None),  # two options named
        ("No, Dark Orchid is not the maximum.", ["yes", "no"], "B"),
        ("Yes, it is the largest.", ["yes", "no"], "A"),
        ("So the correct cube is C.", [], "C"),  # options drawn in the image
        ("The missing piece must be (F).", ["A", "B", "C", "D", "E", "F"], "F"),
        ("The distance is 3.\n\n**B**", ["2", "3", "4", "5"], "B"),
        ("so AB = 5√2.", ["5", "5√2", "10", "10√2"], "B"),  # value equal to an option's text
        ("So AC = \\sqrt{27}.", ["3", "3√{3}", "6", "6√{3}"], "B"),  # ... mathematically
        ("∠BOC = 180° − 110° = 70°.", ["135°", "140°", "145°", "150°"], "70^{\\circ}"),  # no option: kept
        ("Either B or C could be folded.", [], None),
    ],
)
def test_choice_conclusions(text: str, options: list[str], expected: str | None) -> None:
    letters = "ABCDEFGH"[: len(options) or 5]
    assert read_conclusion_choice(text, options, letters) == expected


def test_odd_text_never_raises_and_stays_fast() -> None:
    rng = random.Random(7)
    alphabet = "0123456789 .,;:=+-()[]{}$\\^_/*?!abcxyzABC√π°×∞²−isaretheofandor\n"
    texts = ["".join(rng.choice(alphabet) for _ in range(rng.randint(1, 300))) for _ in range(300)]
    texts.append("the value is 1 and " * 2000 + "so it is 3")  # one enormous run-on sentence
    start = time.perf_counter()
    for text in texts:
        read_conclusion(text)
        read_conclusion_choice(text, ["1", "2", "yes"], "ABC")
    assert time.perf_counter() - start < 20
    assert read_conclusion(texts[-1]) is None  # not a conclusion sentence


def test_number_words_openings_and_stated_letters() -> None:
    assert [number_word(w) for w in ("four", "Twenty-five,", "ninety", "hundred", "one-two")] == [
        "4", "25", "90", None, None]  # fmt: skip
    assert read_opening("14 cubes.\nThree rows of four, two on top.") == "14"
    assert read_opening("1.\nCount the rows.") is None and read_opening("3 × 4 = 12\nthen add two.") is None
    assert read_opening("14") is None  # nothing after it: a bare answer, read elsewhere
    assert read_opening("The Square. It has four lines.", ["circle", "square"]) == "B"
    pets = ["fish", "cats and dogs"]
    assert stated_letter("I see cats and dogs (B).\nNo fish.", pets, "AB") == "B"
    assert stated_letter("(A) fish (B) cats and dogs", pets, "AB") is None  # the options restated
    assert stated_letter("(A) fish.\nOr perhaps (B) cats and dogs.", pets, "AB") is None  # two stated: none
    assert stated_letter("Not (A), the fish.\nIt is (B) cats and dogs.", pets, "AB") == "B"  # a rejected one is not
    assert stated_letter("(B) cats and dogs cannot be right, since the bowl holds a goldfish.", pets, "AB") is None
    assert read_opening("3 cases to consider.\nCase 1: x > 0 gives nothing.") is None


def test_yes_no_needs_the_whole_predicate_once() -> None:
    q = "Question: Is Dark Violet the minimum?\nChoices:\n(A) Yes\n(B) No"
    yes_no = ["Yes", "No"]
    assert read_conclusion_choice("Dark Violet is not the minimum.", yes_no, "AB", q) == "B"
    assert read_conclusion_choice("Reading the bars, Dark Violet is the minimum.", yes_no, "AB", q) == "A"
    assert read_conclusion_choice("Violet is the smallest bar.", yes_no, "AB", q) is None  # not the question's words
    assert read_conclusion_choice("Dark Violet is not the maximum, it is not the minimum.", yes_no, "AB", q) is None
    cont = "Question: Is the function continuous at x = 0?"
    assert read_conclusion_choice("There is no jump, so the function is continuous.", yes_no, "AB", cont) == "A"
    assert read_conclusion_choice("The function is not continuous, as there is a jump.", yes_no, "AB", cont) == "B"
