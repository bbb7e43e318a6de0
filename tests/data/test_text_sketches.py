"""Normalised questions, their numbers, MinHash sketches and their LSH keys."""

from __future__ import annotations

from mathse.data.text_sketches import (
    band_keys,
    exact_key,
    jaccard,
    lsh_params,
    minhash,
    normalise,
    numbers,
    numbers_compatible,
    pack_signature,
    signature_values,
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


def test_lsh_band_keys_are_shared_by_near_questions_and_not_by_others() -> None:
    bands, rows = lsh_params(0.6, 64)
    assert (bands, rows) == (10, 6)  # datasketch's MinHashLSH choice at this threshold

    def keys(question: str) -> set[int]:
        return set(band_keys(signature_values(pack_signature(minhash(normalise(question), 64, 2))), bands, rows))

    base = keys("What is the area of the triangle ABC with base 6 and height 4?")
    assert len(base) == bands
    assert base & keys("what is the area of triangle ABC with base 6 and height 4")
    assert not base & keys("How many red dots are in the image?")
    assert exact_key(text_key("what is 6 + 5")) == exact_key(text_key(normalise("What is 6+5?"))) >= 1 << 62
