"""Normalised questions, their numbers, MinHash sketches and the near-text index."""

from __future__ import annotations

from mathse.data.text_sketches import (
    NearTextIndex,
    jaccard,
    minhash,
    normalise,
    numbers,
    numbers_compatible,
    pack_signature,
    text_key,
    unpack_signature,
)


def test_normalising_drops_case_punctuation_and_spacing_but_keeps_numbers_and_symbols() -> None:
    assert normalise("What is 6+5?") == normalise("  what IS 6 + 5 ") == "what is 6 + 5"
    assert text_key(normalise("Find x.")) == text_key(normalise("find   X")) != text_key(normalise("Find y."))
    assert normalise("Ａrea ＝ 12") == "area = 12"  # full-width forms (NFKC)


def test_numbers_rule_keeps_copies_with_added_options_and_separates_other_numbers() -> None:
    assert numbers("AB is 3.5 and BC 12; find 3.5 + 12") == ["3.5", "12", "3.5", "12"]
    assert numbers_compatible(("5", "6"), ("5", "6"))
    assert numbers_compatible(("5", "6"), ("5", "6", "10", "11", "12", "13"))  # the copy lists the options too
    assert numbers_compatible(("3", "5", "6"), ("5", "6"))
    assert not numbers_compatible(("5", "6"), ("5", "7"))
    assert not numbers_compatible(("5", "5"), ("5", "6"))  # 5 + 5 is not 5 + 6
    assert not numbers_compatible(("6", "4"), ("4", "6"))  # nor is 6 + 4 the problem 4 + 6
    assert numbers_compatible((), ("1",))


def test_sketches_round_trip_and_estimate_similarity() -> None:
    a = minhash(normalise("The image shows two numbers in two boxes. What is their sum?"), 64, 2)
    b = minhash(normalise("The picture shows two numbers in two boxes. What is their sum?"), 64, 2)
    c = minhash(normalise("How many red dots are in the image?"), 64, 2)
    assert jaccard(unpack_signature(pack_signature(a)), a) == 1.0
    assert jaccard(a, b) > 0.6 > 0.3 > jaccard(a, c)


def test_templated_questions_about_other_numbers_come_out_far_apart() -> None:
    template = "In the figure, segment AB is {} and the shaded area is {}. What is the perimeter?"
    def sketch(a: int, b: int):
        return minhash(normalise(template.format(a, b)), 64, 2)

    assert jaccard(sketch(3, 40), sketch(3, 40)) == 1.0 and jaccard(sketch(3, 40), sketch(7, 41)) < 0.5


def test_index_finds_exact_and_near_questions_only() -> None:
    index = NearTextIndex(threshold=0.6, num_perm=64)
    questions = ["What is the area of the triangle ABC with base 6 and height 4?",
                 "How many red dots are in the image?", "Find the perimeter of the square."]
    for i, q in enumerate(questions):
        index.add(i, text_key(normalise(q)), minhash(normalise(q), 64, 2))
    probe = "what is the area of triangle ABC with base 6 and height 4"
    found = index.query(text_key(normalise(probe)), minhash(normalise(probe), 64, 2))
    assert list(found) == [0] and found[0] >= 0.6
    exact = index.query(text_key(normalise("How many red dots are in the image")), None)
    assert exact == {1: 1.0}
    assert index.query(text_key("x"), minhash("a question about something else entirely", 64, 2)) == {}
    assert len(index) == 3
