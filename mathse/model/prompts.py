"""Prompts shared by several stages, so training and generation see the same text."""

from __future__ import annotations

from mathse.judging.steps import number_steps, split_steps
from mathse.run.config import ConfigError, MathSEConfig
from mathse.run.records import JudgedPathRow, Problem

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


def reflection_prompt(cfg: MathSEConfig, draft: JudgedPathRow) -> str:
    """The teacher's reflection prompt for an incorrect path (`draft`: a rejected-path row), with the
    ORM's diagnosis (`reflect.prompt`) or, `reflect.feedback: teacher`, without it (`reflect.teacher_prompt`)."""
    steps = split_steps(draft.reasoning)
    if cfg.reflect.feedback == "teacher":  # no diagnosis: the teacher finds the wrong step itself
        return fill_template(cfg.reflect.teacher_prompt, "reflect.teacher_prompt", question=draft.question,
                             answer=draft.answer, draft=draft.reasoning, steps=number_steps(steps))
    k = draft.error_step
    step_text = steps[k - 1] if isinstance(k, int) and 1 <= k <= len(steps) else "(the reviewer did not locate it)"
    return fill_template(
        cfg.reflect.prompt,
        "reflect.prompt",
        question=draft.question,
        answer=draft.answer,
        draft=draft.reasoning,
        steps=number_steps(steps),
        error_step=str(k) if k else "unknown",
        error_step_text=step_text,
        analysis=draft.analysis or "(no analysis given)",
    )
