"""Normalised questions, their numbers and operators, content-word sketches and their salted LSH keys."""

from __future__ import annotations

import numpy as np

from mathse.data.text_sketches import (
    band_keys,
    content_words,
    exact_key,
    minhash,
    normalise,
    number_salt,
    numbers,
    numbers_compatible,
    operators,
    options_compatible,
    pack_signature,
    signature_values,
    similarity,
    split_numbers,
    text_key,
    words,
)


def sketch(question: str) -> np.ndarray:
    return signature_values(pack_signature(minhash(content_words(words(question)), 64)))


def keys(question: str) -> set[int]:
    asked, options = split_numbers(question)
    return set(band_keys(sketch(question), number_salt(asked + options)))


def test_normalising_drops_case_punctuation_and_spacing_and_spells_small_numbers_and_operators() -> None:
    assert normalise("What is 6+5?") == normalise("  what IS six plus 5 ") == "what is 6 + 5"
    assert text_key(normalise("Find x.")) == text_key(normalise("find   X")) != text_key(normalise("Find y."))
    assert normalise("Ａrea ＝ 12") == "area = 12"  # full-width forms (NFKC)
    assert normalise("a right-angled triangle, 7 - 2") == "a right angled triangle 7 - 2"
    assert normalise("one of the two sides") == "one of the 2 sides"  # "one" is often a pronoun: kept


def test_numbers_rule_keeps_copies_with_options_apart_and_separates_other_numbers_and_operators() -> None:
    assert numbers("AB is 3.5 and BC 12; find 3.5 + 12") == ["3.5", "12", "3.5", "12"]
    assert split_numbers("What is 27 + 4? (A) 31 (B) 30 C. 29") == (("27", "4"), ("29", "30", "31"))
    assert options_compatible(("29", "30", "31"), ("29", "30", "31")) and options_compatible((), ("1",))
    assert not options_compatible(("29", "30", "31"), ("28", "30", "31"))
    assert numbers_compatible(("5", "6"), ("5", "6"))
    assert numbers_compatible(("5", "6"), ("5", "6", "10", "11", "12", "13"))  # the copy says more
    assert numbers_compatible(("3", "5", "6"), ("5", "6"))
    assert not numbers_compatible(("5", "6"), ("5", "7"))
    assert not numbers_compatible(("5", "5"), ("5", "6"))  # 5 + 5 is not 5 + 6
    assert not numbers_compatible(("6", "4"), ("4", "6"))  # nor is 6 + 4 the problem 4 + 6
    assert numbers_compatible((), ("1",))
    assert operators(words("What is 7 + 3?")) == ("+",) and operators(words("seven minus 3")) == ("-",)
    assert not numbers_compatible(operators(words("What is 7 + 3?")), operators(words("What is 7 - 3?")))


def test_content_words_survive_rewording_and_paraphrase() -> None:
    a = sketch("The image shows two numbers in two boxes. What is their sum?")
    assert similarity(a, sketch("The picture displays 2 numbers in 2 boxes. Find their sum.")) == 1.0
    assert similarity(a, sketch("Work out their sum: two numbers are drawn in two boxes")) == 1.0
    assert similarity(a, sketch("How many red dots are in the image?")) < 0.2
    assert content_words(words("What is shown in the figure?")) == {""}  # nothing but stop words


def test_band_keys_meet_only_for_near_questions_about_the_same_numbers() -> None:
    base = keys("In the figure, segment AB is 3 and the shaded area is 40. What is the perimeter?")
    assert len(base) == 32  # numbers: 32 bands of 2
    assert base & keys("Segment AB is 3 and the shaded area is 40 in the picture; compute the perimeter.")
    assert not base & keys("In the figure, segment AB is 7 and the shaded area is 41. What is the perimeter?")
    free = keys("Find the perimeter of the square.")
    assert len(free) == 16 and free & keys("find the perimeter of this square")  # no numbers: 16 bands of 4
    assert not free & keys("How many red dots are in the image?")
    assert exact_key(text_key("what is 6 + 5")) == exact_key(text_key(normalise("What is 6+5?"))) >= 1 << 62
