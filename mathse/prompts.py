"""Prompts shared by several stages, so training and generation see the same text."""

from __future__ import annotations

from mathse.config import ConfigError
from mathse.records import Problem

# The student (the VLM being evolved) is trained and queried with exactly this prompt.
STUDENT_INSTRUCTION = (
    "Solve the problem step by step, one step per line starting with 'Step k:'. "
    "End with the line 'The final answer is \\boxed{answer}'."
)


def student_prompt(problem: Problem) -> str:
    """The user turn the student model sees for `problem` (images are attached separately)."""
    return f"{problem.question}\n\n{STUDENT_INSTRUCTION}"


def fill_template(template: str, key: str, **values: str) -> str:
    """`template.format(**values)` with an error naming the config key on a bad placeholder."""
    try:
        return template.format(**values)
    except (KeyError, IndexError, ValueError) as exc:
        allowed = ", ".join("{" + v + "}" for v in values)
        raise ConfigError([f"config error: {key}: bad placeholder {exc} (allowed: {allowed})"]) from None
