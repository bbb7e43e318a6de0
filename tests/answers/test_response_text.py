"""What of a published response is the reply: end markers and invented follow-up questions."""

from __future__ import annotations

import pytest

from mathse.answers.response_text import reply_parts, strip_end_markers


@pytest.mark.parametrize(
    ("raw", "reply"),
    [
        ("The answer is 14</s>", "The answer is 14"),
        ("The answer is 14.<|im_end|>\n<|im_start|>user\nAnd blue?<|im_end|>", "The answer is 14."),
        ("<|im_start|>assistant\nSo 14.<|im_end|>", "So 14."),
        ("<s>14</s></s>", "<s>14"),  # "<s>" opens a text, it is no end marker
        ("So 14.<|eot_id|><|start_header_id|>user", "So 14."),
        ("No marker at all.", "No marker at all."),
    ],
)
def test_end_markers_end_the_reply(raw: str, reply: str) -> None:
    assert strip_end_markers(raw) == reply


def test_invented_follow_up_questions_are_split_off() -> None:
    text = "Question: how many?\nThere are 14.\n\nQuestion: How many are red?\nAnswer: 6\n**Q2:** blue?\n"
    text += "### Problem 3\nx"
    parts = reply_parts(text)
    assert parts[0] == "Question: how many?\nThere are 14.\n\n"  # a question restated first is no follow-up
    assert [p.split("\n")[0] for p in parts[1:]] == ["Question: How many are red?", "**Q2:** blue?", "### Problem 3"]
    assert reply_parts("So the answer is 14.") == ["So the answer is 14."]
    # "the question asks" mid-line is no new question
    assert len(reply_parts("The question: asks for the area.\nIt is 14.")) == 1
