"""The scripted teacher: real prompts in, contract replies out, over real HTTP with the openai SDK."""

from __future__ import annotations

from typing import Any

import openai
import pytest

from mathse.answers.extraction import check_path
from mathse.demo.problems import countdown_solution
from mathse.judging.steps import split_steps
from mathse.judging.verdict import build_orm_prompt, parse_verdict
from mathse.model.prompts import fill_template, reflection_prompt
from mathse.run.config import MathSEConfig, OrmDataConfig
from mathse.run.records import JudgedPathRow
from mathse.stages.reflect import split_reply
from mathse.testing.scripted_teacher import ScriptedTeacher, first_faulty_step, serve_scripted_teacher

CFG = MathSEConfig.model_validate({"model": {"base": "x"}, "teacher": {"base_url": "http://x/v1", "model": "t"}})
SUMS = [(a, b) for a in (0, 3, 12, 19) for b in (0, 1, 5, 9)]


def distill_prompt(a: int, b: int) -> str:
    template = CFG.require("teacher").distill_prompt
    return fill_template(template, "teacher.distill_prompt", question=f"What is {a} + {b}?", answer=str(a + b))


def ask(client: openai.OpenAI, text: str) -> str:
    reply = client.chat.completions.create(model="gpt-4o", messages=[{"role": "user", "content": text}])
    return reply.choices[0].message.content or ""


@pytest.fixture(scope="module")
def served():
    with serve_scripted_teacher(error_rate=0.3, seed=1) as (server, teacher):
        yield openai.OpenAI(base_url=server.base_url, api_key="none", max_retries=0), teacher


def test_distill_solutions_are_count_downs_with_some_slips(served: tuple[openai.OpenAI, Any]) -> None:
    client, teacher = served
    right = wrong = 0
    for a, b in SUMS * 2:
        prompt = distill_prompt(a, b) + (" Again." if wrong + right >= len(SUMS) else "")
        text = ask(client, prompt)
        assert text == ask(client, prompt), "replies must be deterministic per prompt"
        if text == countdown_solution(a, b):
            right += 1
            continue
        wrong += 1
        assert not check_path(text, str(a + b)).correct  # the slip ends on a wrong answer
        found = first_faulty_step(a, b, split_steps(text))
        assert found is not None and found[0] >= 2 and str(found[0]) in found[1]
    assert right > wrong > 0
    assert teacher.counts["distill"] == 4 * len(SUMS)


def test_annotation_names_the_first_faulty_step(served: tuple[openai.OpenAI, Any]) -> None:
    client, _ = served
    lines = countdown_solution(7, 5).splitlines()
    lines[3] = "10 (3)"  # step 4 should be "9 (3)"
    steps = split_steps("\n".join(lines))
    verdict = parse_verdict(ask(client, build_orm_prompt("What is 7 + 5?", steps, "12")), n_steps=len(steps))
    assert verdict.correct is False and verdict.error_step == 4 and "9 (3)" in verdict.analysis

    short = split_steps("7 + 5:\n7 (5)\n8 (4)\nThe final answer is \\boxed{8}")
    verdict = parse_verdict(ask(client, build_orm_prompt("What is 7 + 5?", short, "12")), n_steps=len(short))
    assert verdict.correct is False and verdict.error_step == 3

    good = split_steps(countdown_solution(7, 5))
    verdict = parse_verdict(ask(client, build_orm_prompt("What is 7 + 5?", good, "12")), n_steps=len(good))
    assert verdict.correct is True and verdict.error_step is None


def test_reflection_corrects_the_draft(served: tuple[openai.OpenAI, Any]) -> None:
    client, _ = served
    reasoning = "4 + 3:\n4 (3)\n6 (2)\nThe final answer is \\boxed{6}"
    draft = JudgedPathRow(id="p", question="What is 4 + 3?", images=[], answer="7", round=1, sample=0, prompt="",
                          reasoning=reasoning, error_step=3, analysis="Step 3 skips 5.")
    parts = split_reply(ask(client, reflection_prompt(CFG, draft)))
    assert parts is not None
    reflection, corrected = parts
    assert "step 3" in reflection.lower() and corrected == countdown_solution(4, 3)


@pytest.mark.parametrize(
    ("prompt", "reason"),
    [
        ("Please add the numbers in the picture.", "no count-down question"),
        ("What is 2 + 3?\nWrite a solution.", "no 'reference answer: N'"),
        ("What is 2 + 3?\n\nThe reference answer is: 6", "reference answer 6 is not the sum 5"),
        ('What is 2 + 3? Reply {"correct": .., "error_step": ..}; the solution: 2 + 3 = 5', "no numbered steps"),
    ],
)
def test_an_unreadable_prompt_fails_loudly(prompt: str, reason: str) -> None:
    with serve_scripted_teacher() as (server, teacher):
        client = openai.OpenAI(base_url=server.base_url, api_key="none", max_retries=0)
        with pytest.raises(openai.BadRequestError, match=reason):
            ask(client, prompt)
    assert len(teacher.unreadable) == 1 and reason in teacher.unreadable[0]


def test_error_rate_zero_never_slips() -> None:
    teacher = ScriptedTeacher(error_rate=0.0)
    assert all(teacher.solve(a, b, distill_prompt(a, b)) == countdown_solution(a, b) for a, b in SUMS)


# The prompt the ORM stage really sends (orm.data.annotate_prompt): a change to it must keep the contract.
ANNOTATE_PROMPT = OrmDataConfig().annotate_prompt


def test_annotation_prompt_of_the_orm_data(served: tuple[openai.OpenAI, Any]) -> None:
    from mathse.judging.steps import number_steps

    client, _ = served
    steps = split_steps("13 + 4:\n13 (4)\n14 (3)\n15 (2)\n15 (1)\n16 (0)\nThe final answer is \\boxed{16}")
    prompt = ANNOTATE_PROMPT.format(question="What is 13 + 4?", answer="17", steps=number_steps(steps),
                                    n_steps=len(steps))
    verdict = parse_verdict(ask(client, prompt), n_steps=len(steps))
    assert verdict.correct is False and verdict.error_step == 5 and "16 (1)" in verdict.analysis
