"""Step splitting: one numbering convention for generation, ORM, reflection and reports."""

from __future__ import annotations

import random

import pytest

from mathse.judging.steps import number_steps, split_steps


def test_step_markers_strip_marker_and_keep_final_answer_in_last_step() -> None:
    text = (
        "Step 1: Let the side be x, so x^2 = 16.\n"
        "Step 2: Hence x = 4.\n"
        "Step 3: The perimeter is 4x = 16.\n"
        "The final answer is $\\boxed{16}$."
    )
    steps = split_steps(text)
    assert steps == [
        "Let the side be x, so x^2 = 16.",
        "Hence x = 4.",
        "The perimeter is 4x = 16.\nThe final answer is $\\boxed{16}$.",
    ]


def test_inline_step_markers() -> None:
    steps = split_steps("Step 1: a = 2. Step 2: b = 3. Step 3: a + b = 5. The answer is 5.")
    assert steps == ["a = 2.", "b = 3.", "a + b = 5. The answer is 5."]


def test_bold_markers_preamble_and_back_reference() -> None:
    text = (
        "Let's solve it.\n"
        "**Step 1: Find the area.** The area is 6.\n"
        "**Step 2:** The height is 3, as computed in step 1.\n\n"
        "**Step 3**: Therefore $\\boxed{3}$."
    )
    steps = split_steps(text)
    assert len(steps) == 3
    assert steps[0] == "Let's solve it.\nFind the area. The area is 6."
    # "step 1" inside step 2 is a reference, not a new step.
    assert steps[1] == "The height is 3, as computed in step 1."
    assert steps[2] == "Therefore $\\boxed{3}$."


def test_markdown_step_headings() -> None:
    text = "## Step 1\nCompute 2 + 2 = 4.\n## Step 2\nDouble it: 8.\nFinal answer: 8"
    assert split_steps(text) == ["Compute 2 + 2 = 4.", "Double it: 8.\nFinal answer: 8"]


def test_plain_markdown_headings_are_sections() -> None:
    text = "# Setup\nWe have x + 1 = 4.\n# Solve\nx = 3\n# Answer\n3"
    assert split_steps(text) == ["# Setup\nWe have x + 1 = 4.", "# Solve\nx = 3", "# Answer\n3"]


def test_numbered_list_ignores_nested_sublist() -> None:
    text = "1. First, x = 1.\n   1) sub a\n   2) sub b\n2. Then y = 2.\n3. So x + y = 3.\nAnswer: 3"
    steps = split_steps(text)
    assert len(steps) == 3
    assert "sub b" in steps[0]
    assert steps[1] == "Then y = 2."
    assert steps[2] == "So x + y = 3.\nAnswer: 3"


def test_decimals_at_line_start_are_not_a_list() -> None:
    assert split_steps("1.5 is the value\n2.5 is the other") == ["1.5 is the value", "2.5 is the other"]


def test_paragraphs_with_final_answer_merged() -> None:
    text = "We know a = 1.\n\nThen b = 2a = 2.\n\nThe final answer is 2."
    assert split_steps(text) == ["We know a = 1.", "Then b = 2a = 2.\nThe final answer is 2."]


def test_boxed_only_last_paragraph_merged_but_real_conclusion_kept() -> None:
    assert split_steps("a = 1\n\nb = 2\n\n$\\boxed{2}$") == ["a = 1", "b = 2\n$\\boxed{2}$"]
    # A last paragraph that does more than state the answer is its own step.
    assert split_steps("a = 1\n\nb = 2\n\nThus a + b = 3.") == ["a = 1", "b = 2", "Thus a + b = 3."]


def test_line_fallback() -> None:
    assert split_steps("a = 1\nb = 2\nThe final answer is 3") == ["a = 1", "b = 2\nThe final answer is 3"]


def test_chinese_markers() -> None:
    text = "第一步：设边长为x。\n第二步：x=4。\n第三步：周长为16。答案：16"
    assert split_steps(text) == ["设边长为x。", "x=4。", "周长为16。答案：16"]
    assert split_steps("步骤1：计算。\n步骤2：得到 5。") == ["计算。", "得到 5。"]
    assert split_steps("第1步：a=1\n第2步：b=2") == ["a=1", "b=2"]


def test_out_of_sequence_markers_are_text() -> None:
    # Step 3 before Step 2 cannot start a step; it stays inside step 1.
    steps = split_steps("Step 1: as in Step 3: no.\nStep 2: ok")
    assert steps == ["as in Step 3: no.", "ok"]


def test_single_step_marker_is_stripped() -> None:
    assert split_steps("Step 1: only step\nThe answer is 2") == ["only step\nThe answer is 2"]


def test_single_line_and_empty() -> None:
    assert split_steps("just one line") == ["just one line"]
    assert split_steps("") == []
    assert split_steps("  \n\t ") == []


def test_crlf_normalised() -> None:
    assert split_steps("Step 1: a\r\nStep 2: b") == ["a", "b"]


def test_number_steps_renders_orm_form() -> None:
    assert number_steps(["a = 1", " b = 2 "]) == "Step 1: a = 1\nStep 2: b = 2"
    assert number_steps([]) == ""


def test_number_then_split_roundtrip() -> None:
    steps = ["Let x = 2.", "Then 3x = 6.", "So the answer is 6."]
    assert split_steps(number_steps(steps)) == steps


@pytest.mark.parametrize("seed", range(30))
def test_random_paths_never_empty_and_lose_no_words(seed: int) -> None:
    rng = random.Random(seed)
    words = ["x", "=", "3", "Step", "1.", "##", "answer", "is", "\\boxed{2}", "so", "第", "步", "**", "(A)"]
    seps = [" ", "\n", "\n\n", ": "]
    text = "".join(rng.choice(words) + rng.choice(seps) for _ in range(rng.randint(1, 40)))
    steps = split_steps(text)
    if not text.strip():
        assert steps == []
        return
    assert steps, text
    # Content survives: every alphanumeric run of the input, minus marker numbers, is kept somewhere.
    joined = " ".join(steps)
    for token in ("x", "answer", "\\boxed{2}"):
        if token in text:
            assert token in joined
