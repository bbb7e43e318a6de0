"""A scripted stand-in for GPT-4o on the demo's count-down task, over real OpenAI HTTP.

NOT a language model: a small program that reads the prompts the pipeline really sends (the
distill prompt, the ORM-annotation prompt, the reflection prompt), works out the answer of
"What is a + b?" by counting down (`mathse.demo.problems.countdown_solution`) and replies in each
prompt's contract, so the demo runs the whole method offline in minutes:

* distill: a correct count-down solution, except for a configurable share (`error_rate`) that
  slips by one at a random step and so ends on a wrong answer (`teacher.filter_by_answer` has work);
* ORM annotation (the prompt asks for the JSON verdict with "error_step"): checks every numbered
  step of the student's path against the count-down rule and names the first faulty one with an
  analysis, in the verdict contract of `mathse.judging.verdict` (`format_orm_response`);
* reflection (the prompt asks for a "Corrected solution"): a reflection on the diagnosed step and
  the corrected path.

A prompt it cannot read (no count-down question, no reference answer, no numbered steps where a
path is expected) is answered with HTTP 400 and recorded in `ScriptedTeacher.unreadable`: the demo
fails on any, so a template change that breaks the contract shows up instead of passing quietly.
Replies are deterministic in (seed, prompt), like a cached API.

    with serve_scripted_teacher(error_rate=0.2) as (server, teacher):
        ...  # teacher.base_url = server.base_url; afterwards check teacher.unreadable
"""

from __future__ import annotations

import contextlib
import hashlib
import random
import re
import threading
from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any

from mathse.demo.problems import COUNTDOWN_RE, countdown_lines
from mathse.judging.steps import split_steps
from mathse.judging.verdict import Verdict, format_orm_response
from mathse.testing.openai_server import FakeHTTPError, FakeOpenAIServer, last_user_text

__all__ = ["PromptContractError", "ScriptedTeacher", "serve_scripted_teacher"]

MODEL_NAME = "scripted-teacher (stand-in for gpt-4o)"
_QUESTION = re.compile(COUNTDOWN_RE)
_REFERENCE = re.compile(r"reference answer(?: is)?\s*:\s*(-?\d+)", re.IGNORECASE)
# Numbered steps as `mathse.judging.steps.number_steps` renders them; a step ends at the next marker or
# at the blank line that closes the block.
_STEP = re.compile(r"^Step (\d+): ?(.*?)(?=\nStep \d+: |\n\n|\Z)", re.MULTILINE | re.DOTALL)
_ASKS_VERDICT = re.compile(r'"error_step"')
_ASKS_CORRECTION = re.compile(r"corrected solution", re.IGNORECASE)


class PromptContractError(ValueError):
    """The prompt lacks something the contract promises (question, reference answer, steps)."""


@dataclass
class ScriptedTeacher:
    """Replies to chat bodies; `reply` is the `replies` callable of a `FakeOpenAIServer`."""

    error_rate: float = 0.2  # share of distilled solutions that slip by one somewhere
    seed: int = 0
    counts: Counter[str] = field(default_factory=Counter)  # replies by kind
    unreadable: list[str] = field(default_factory=list)  # why each unreadable prompt failed
    _lock: threading.Lock = field(default_factory=threading.Lock, repr=False)

    def reply(self, body: dict[str, Any]) -> str:
        text = last_user_text(body)
        try:
            kind, answer = self._answer(text)
        except PromptContractError as err:
            message = f"scripted teacher cannot read the prompt: {err}; prompt starts {text[:120]!r}"
            with self._lock:
                self.unreadable.append(message)
            raise FakeHTTPError(400, message) from None
        with self._lock:
            self.counts[kind] += 1
        return answer

    def _answer(self, text: str) -> tuple[str, str]:
        a, b = _question(text)
        if _ASKS_VERDICT.search(text):
            return "annotate", annotate(a, b, _steps(text))
        if _ASKS_CORRECTION.search(text):
            _steps(text)  # the draft must be there, numbered, even though the fix ignores it
            return "reflect", reflect(a, b, _error_step(text))
        _reference(text, a + b)
        return "distill", self.solve(a, b, text)

    def solve(self, a: int, b: int, prompt: str) -> str:
        """The count-down solution; with probability `error_rate` one count slips by one."""
        digest = hashlib.sha256(f"{self.seed}\0{prompt}".encode()).hexdigest()
        rng = random.Random(digest)
        lines = countdown_lines(a, b)
        total = a + b
        if rng.random() < self.error_rate:
            slip = rng.randint(1, b + 1)  # a line after the header: its running total is one too many
            lines = lines[:slip] + [f"{a + i + 1} ({b - i})" for i in range(slip - 1, b + 1)]
            total += 1
        return "\n".join([*lines, f"The final answer is \\boxed{{{total}}}"])


def _question(text: str) -> tuple[int, int]:
    found = _QUESTION.search(text)
    if found is None:
        raise PromptContractError("no count-down question 'What is a + b?'")
    return int(found.group(1)), int(found.group(2))


def _reference(text: str, expected: int) -> None:
    found = _REFERENCE.search(text)
    if found is None:
        raise PromptContractError("no 'reference answer: N'")
    if int(found.group(1)) != expected:
        raise PromptContractError(f"reference answer {found.group(1)} is not the sum {expected}")


def _steps(text: str) -> list[str]:
    found = _STEP.findall(text)
    numbers = [int(n) for n, _ in found]
    if not found or numbers != list(range(1, len(found) + 1)):
        raise PromptContractError(f"no numbered steps 'Step 1: ... Step n: ...' (found numbers {numbers})")
    return [body.strip() for _, body in found]


def _error_step(text: str) -> int | None:
    found = re.search(r"error at step (\d+)", text, re.IGNORECASE)
    return int(found.group(1)) if found else None


def first_faulty_step(a: int, b: int, steps: list[str]) -> tuple[int, str] | None:
    """(1-based step, analysis) of the first step off the count-down rule; None if all are right."""
    expected = split_steps("\n".join([*countdown_lines(a, b), f"The final answer is \\boxed{{{a + b}}}"]))
    for k, (want, got) in enumerate(zip(expected, steps, strict=False), start=1):
        if want.split() != got.split():
            if k == 1:
                why = f"it should restate the problem as '{want}'"
            elif k == len(expected):
                last = want.splitlines()[0]
                why = f"the count left has reached 0, so the last line is '{last}' and the answer is {a + b}"
            else:
                why = ("each line adds one to the running total and takes one from the count left, "
                       f"so it should read '{want.splitlines()[0]}'")
            return k, f"Step {k} reads '{got.splitlines()[0] if got else ''}' but {why}."
    if len(steps) < len(expected):
        k = len(steps)
        return k, f"Step {k} stops before the count left reaches 0; the count must go on to {a + b} (0)."
    if len(steps) > len(expected):
        k = len(expected) + 1
        return k, f"Step {k} goes on after the count left reached 0 at {a + b}."
    return None


def annotate(a: int, b: int, steps: list[str]) -> str:
    """The first faulty step and why, as the ORM's JSON verdict."""
    found = first_faulty_step(a, b, steps)
    if found is None:
        verdict = Verdict(correct=True, analysis="Every line follows the count-down rule and the answer is right.")
    else:
        verdict = Verdict(correct=False, error_step=found[0], analysis=found[1])
    return format_orm_response(verdict)


def reflect(a: int, b: int, error_step: int | None) -> str:
    where = f"At step {error_step}" if error_step else "Somewhere"
    reflection = (f"{where} the count slipped: every line must add exactly one to the running total and take "
                  f"exactly one from the count left, stopping when it reaches 0, which gives {a + b}.")
    solution = "\n".join([*countdown_lines(a, b), f"The final answer is \\boxed{{{a + b}}}"])
    return f"Reflection: {reflection}\nCorrected solution:\n{solution}"


@contextlib.contextmanager
def serve_scripted_teacher(
    error_rate: float = 0.2, seed: int = 0, port: int = 0
) -> Iterator[tuple[FakeOpenAIServer, ScriptedTeacher]]:
    """The scripted teacher on a real OpenAI-compatible HTTP server on 127.0.0.1 (stopped on exit)."""
    teacher = ScriptedTeacher(error_rate=error_rate, seed=seed)
    with FakeOpenAIServer(replies=teacher.reply, port=port, model_name=MODEL_NAME, record_bodies=False) as server:
        yield server, teacher
