"""ORM verdict contract: prompt, target formatting, tolerant parsing, combining with the rule check."""

from __future__ import annotations

import json
import random

import pytest
from pydantic import ValidationError

from mathse.answers.extraction import RuleCheck
from mathse.judging.steps import number_steps, split_steps
from mathse.judging.verdict import (
    ORM_SYSTEM_PROMPT,
    Verdict,
    build_orm_prompt,
    combine,
    format_orm_response,
    parse_verdict,
    rule_verdict,
)

# --------------------------------------------------------------------------- prompt contract


def test_prompt_shows_question_reference_and_numbered_steps() -> None:
    path = "Step 1: 2 + 3 = 6.\nStep 2: So the answer is 6."
    steps = split_steps(path)
    prompt = build_orm_prompt("What is 2 + 3?", steps, "5")
    assert "What is 2 + 3?" in prompt
    assert "## Reference answer\n5" in prompt
    assert number_steps(steps) in prompt
    assert "Step 1: 2 + 3 = 6.\nStep 2: So the answer is 6." in prompt
    assert "1 to 2 or null" in prompt  # valid error_step range is spelled out
    assert '"error_step"' in prompt and '"correct"' in prompt


def test_prompt_without_reference() -> None:
    prompt = build_orm_prompt("Q?", ["a"], None)
    assert "Reference answer" not in prompt
    assert build_orm_prompt("Q?", ["a"], "  ") == prompt


def test_system_prompt_states_json_contract() -> None:
    for key in ('"correct"', '"error_step"', '"analysis"', '"score"', "FIRST", "1-based"):
        assert key in ORM_SYSTEM_PROMPT


# --------------------------------------------------------------------------- formatting


def test_format_is_plain_json_in_contract_order() -> None:
    verdict = Verdict(correct=False, error_step=2, analysis="2 + 3 is 5, not 6; \\frac{1}{2} 中文", score=0.05)
    text = format_orm_response(verdict)
    obj = json.loads(text)
    assert list(obj) == ["correct", "error_step", "analysis", "score"]
    assert obj == {"correct": False, "error_step": 2, "analysis": "2 + 3 is 5, not 6; \\frac{1}{2} 中文", "score": 0.05}
    assert "中文" in text  # not \u-escaped: readable SFT targets


def test_format_omits_missing_score_and_nulls_step_when_correct() -> None:
    obj = json.loads(format_orm_response(Verdict(correct=True, analysis="fine")))
    assert obj == {"correct": True, "error_step": None, "analysis": "fine"}


def test_format_refuses_unparseable() -> None:
    with pytest.raises(ValueError):
        format_orm_response(Verdict(correct=None))


@pytest.mark.parametrize("seed", range(40))
def test_format_parse_roundtrip(seed: int) -> None:
    rng = random.Random(seed)
    n_steps = rng.randint(1, 12)
    correct = rng.random() < 0.5
    pieces = ["x = 2", "\\frac{1}{2}", 'a "quoted" word', "it's", "line\nbreak", "{braces}", "面积", "Step 3: no", ""]
    analysis = " ".join(rng.choice(pieces) for _ in range(rng.randint(0, 6))).strip()
    verdict = Verdict(
        correct=correct,
        error_step=None if correct or rng.random() < 0.2 else rng.randint(1, n_steps),
        analysis=analysis,
        score=None if rng.random() < 0.3 else round(rng.random(), 4),
        parsed=True,
    )
    # Models often wrap the object in prose or a fence; the contract must survive that.
    wrapper = rng.choice(["{}", "```json\n{}\n```", "Here is my judgement:\n{}\n", "{}\nDone."])
    raw = wrapper.replace("{}", format_orm_response(verdict))
    back = parse_verdict(raw, n_steps=n_steps)
    assert (back.correct, back.error_step, back.analysis, back.score) == (
        verdict.correct,
        verdict.error_step,
        verdict.analysis,
        verdict.score,
    )
    assert back.parsed and back.raw == raw


# --------------------------------------------------------------------------- parsing

# (raw reply, correct, error_step, analysis substring or None, score)
PARSE_CASES = [
    ('{"correct": false, "error_step": 3, "analysis": "Step 3 drops a sign.", "score": 0.1}', False, 3, "drops", 0.1),
    (
        'Let me check.\n```json\n{"correct": true, "error_step": null, "analysis": "All good."}\n```',
        True,
        None,
        "All",
        None,
    ),
    ("{'correct': False, 'error_step': 2, 'analysis': 'bad sum', }", False, 2, "bad sum", None),
    ('{"correct": False, "error_step": 2, "analysis": "bad",}', False, 2, "bad", None),
    ('{\n  "correct": false,\n  "error_step": "Step 4",\n  "analysis": "wrong area"\n}', False, 4, "area", None),
    (
        '{"correct": false, "error_step": 2, "analysis": "use \\frac{1}{2} and \\sqrt{2}"}',
        False,
        2,
        "\\frac{1}{2}",
        None,
    ),
    ('{"is_correct": "incorrect", "first_error_step": 2, "explanation": "x"}', False, 2, "x", None),
    ('{"correct": false, "error_step": 2, "analysis": "The ratio is wro', False, 2, "ratio", None),  # truncated
    ("Correct: no\nError step: 3\nAnalysis: The area formula is wrong.\nIt should be bh/2.", False, 3, "bh/2", None),
    ("Correct: no / Error step: 3 / Analysis: wrong formula", False, 3, "wrong formula", None),
    ("Correct: no, error step: 3", False, 3, None, None),
    ("Verdict: incorrect\nThe first error is in step 2.", False, 2, "first error", None),
    ("Judgement: Correct", True, None, None, None),
    ("**Final verdict:** Incorrect\n**Error step:** Step 4\n**Score:** 0.12", False, 4, None, 0.12),
    ("Is the solution correct: Yes\nScore: 83%", True, None, None, 0.83),
    ("Step 3 is the first error, because 2+2=5 there.", False, 3, "2+2=5", None),
    ("Incorrect.\nStep 2 uses the wrong formula.", False, 2, "wrong formula", None),
    ("The solution is correct.", True, None, None, None),
    ("Verdict: There are no errors.", True, None, None, None),
    ("Score: 0.83", True, None, None, 0.83),
    ("Score: 0.2", False, None, None, 0.2),
    ("正确: 否\n错误步骤：3\n分析：面积公式用错了。", False, 3, "面积公式", None),
    ("是否正确：是\n分析：每一步都对。", True, None, "每一步", None),
    ("结论：错误\n第2步出现错误，正确结果应为5。", False, 2, "第2步", None),
    ("错误步骤：第3步\n分析：计算错误", False, 3, "计算错误", None),
    ("判断：正确", True, None, None, None),
    ("结论：这是错误的", False, None, None, None),  # the "是" inside a sentence is no "yes"
    ("Verdict: the solution is not right.", False, None, None, None),
    ("Error step: -\nCorrect: no", False, None, None, None),
    ("从第三步开始出错了。", False, 3, None, None),
    ("Analysis: The result: 5 is obtained.\nResult: x = 5\nCorrect: yes", True, None, "Result: x = 5", None),
    ("Incorrect.\nStep 2 computes \\frac{1}{2} wrongly", False, None, "\\frac{1}{2}", None),  # LaTeX is no JSON
    ("Correct: yes\nI first thought step 2 is wrong, but it is fine.", True, None, "first thought", None),
    ("yes", True, None, None, None),
    ("No", False, None, None, None),
]


@pytest.mark.parametrize(("raw", "correct", "error_step", "analysis", "score"), PARSE_CASES)
def test_parse_verdict_formats(
    raw: str, correct: bool, error_step: int | None, analysis: str | None, score: float | None
) -> None:
    verdict = parse_verdict(raw, n_steps=6)
    assert verdict.correct is correct
    assert verdict.parsed
    assert verdict.error_step == error_step
    if analysis is not None:
        assert analysis in verdict.analysis
    assert verdict.score == score
    assert verdict.raw == raw


@pytest.mark.parametrize(
    "raw",
    [
        "",
        "   ",
        "I am not sure what to say here.",
        "The problem asks for the area of a triangle.",
        "{}",
        '{"analysis": "hmm"}',
        '{"correct": "maybe"}',
        "Correct: perhaps",
        "Correct answer: 5",  # a statement about the answer, not a judgement
        "\x00\x01 garbage }{ ][",
        "{" * 500,
        "Yes, let me think about step 2 first.\nIt computes 2+2.",  # "yes" opening a longer reply
    ],
)
def test_unparseable_is_never_correct(raw: str) -> None:
    verdict = parse_verdict(raw, n_steps=4)
    assert verdict.correct is None
    assert not verdict.parsed
    assert verdict.error_step is None
    assert not verdict.is_correct
    assert verdict.raw == raw


def test_parse_never_raises_on_non_string() -> None:
    verdict = parse_verdict(None)  # type: ignore[arg-type]
    assert verdict.correct is None and not verdict.parsed


def test_contradiction_correct_with_error_step_is_incorrect() -> None:
    verdict = parse_verdict('{"correct": true, "error_step": 3, "analysis": "fine"}', n_steps=5)
    assert verdict.correct is False
    assert verdict.error_step == 3
    assert "treated as incorrect" in verdict.analysis


@pytest.mark.parametrize("sentinel", [0, -1])
def test_correct_with_no_error_sentinel(sentinel: int) -> None:
    verdict = parse_verdict(json.dumps({"correct": True, "error_step": sentinel, "analysis": "ok"}), n_steps=5)
    assert verdict.correct is True and verdict.error_step is None and verdict.analysis == "ok"


@pytest.mark.parametrize(("step", "n_steps"), [(9, 5), (6, 5), (0, 5), (-2, None)])
def test_out_of_range_error_step_is_dropped_not_clamped(step: int, n_steps: int | None) -> None:
    verdict = parse_verdict(json.dumps({"correct": False, "error_step": step, "analysis": "x"}), n_steps=n_steps)
    assert verdict.correct is False
    assert verdict.error_step is None
    assert "out of range" in verdict.analysis


def test_in_range_boundaries_kept() -> None:
    assert parse_verdict('{"correct": false, "error_step": 5}', n_steps=5).error_step == 5
    assert parse_verdict('{"correct": false, "error_step": 1}', n_steps=5).error_step == 1
    assert parse_verdict('{"correct": false, "error_step": 50}').error_step == 50  # n_steps unknown


def test_error_step_without_correctness_implies_incorrect() -> None:
    verdict = parse_verdict("Error step: 2\nAnalysis: sign error")
    assert verdict.correct is False and verdict.error_step == 2 and verdict.analysis == "sign error"
    none_step = parse_verdict("Error step: none")
    assert none_step.correct is None and not none_step.parsed


def test_out_of_range_score_dropped() -> None:
    verdict = parse_verdict('{"correct": true, "score": 7}')
    assert verdict.correct is True and verdict.score is None


def test_last_json_object_wins() -> None:
    raw = 'First guess: {"correct": true}\nOn reflection: {"correct": false, "error_step": 1, "analysis": "no"}'
    verdict = parse_verdict(raw, n_steps=3)
    assert verdict.correct is False and verdict.error_step == 1


def test_verdict_is_frozen_and_validated() -> None:
    verdict = Verdict(correct=True)
    with pytest.raises(ValidationError):
        verdict.correct = False  # type: ignore[misc]
    with pytest.raises(ValidationError):
        Verdict(correct=False, error_step=0)
    with pytest.raises(ValidationError):
        Verdict(correct=True, score=1.5)


# --------------------------------------------------------------------------- rule + combine


def _orm(correct: bool | None, error_step: int | None = None, score: float | None = None) -> Verdict:
    return Verdict(
        correct=correct,
        error_step=error_step,
        analysis=f"orm says {correct}",
        score=score,
        parsed=correct is not None,
        raw="raw",
    )


RULE_OK = rule_verdict(RuleCheck(True, "5", "match"))
RULE_BAD = rule_verdict(RuleCheck(False, "6", "mismatch: got 6, expected 5"))


def test_rule_verdict() -> None:
    assert (
        Verdict(correct=False, error_step=None, analysis="mismatch: got 6, expected 5", parsed=True, source="rule")
        == RULE_BAD
    )
    assert RULE_OK.correct is True and RULE_OK.parsed


@pytest.mark.parametrize(
    ("orm", "rule", "policy", "expected"),
    [
        (True, True, "both", True),
        (True, False, "both", False),
        (False, True, "both", False),
        (None, True, "both", None),  # unparseable ORM never makes a path correct
        (True, True, "either", True),
        (True, False, "either", True),
        (False, True, "either", True),
        (False, False, "either", False),
        (None, False, "either", False),
        (None, None, "either", None),
        (True, False, "orm", True),
        (None, True, "orm", None),
        (True, False, "rule", False),
        (False, True, "rule", True),
    ],
)
def test_combine_policies(orm: bool | None, rule: bool | None, policy: str, expected: bool | None) -> None:
    rule_v = None if rule is None else (RULE_OK if rule else RULE_BAD)
    result = combine(_orm(orm), rule_v, policy, None)  # type: ignore[arg-type]
    assert result.correct is expected
    assert result.parsed is (expected is not None)
    assert result.source == policy
    if expected is not True:
        assert not result.is_correct


def test_combine_missing_verdicts() -> None:
    assert combine(None, RULE_OK, "orm", None).correct is None
    assert combine(None, RULE_OK, "both", None).correct is None
    assert combine(None, RULE_OK, "either", None).correct is True
    assert combine(None, None, "either", None).correct is None
    assert combine(_orm(True), None, "rule", None).correct is None


def test_combine_takes_step_and_analysis_from_orm() -> None:
    result = combine(_orm(False, error_step=2, score=0.1), RULE_BAD, "both", None)
    assert result.error_step == 2
    assert result.analysis == "orm says False"  # rule agrees: no extra note
    assert result.score == 0.1 and result.raw == "raw"


def test_combine_adds_rule_reason_on_disagreement() -> None:
    result = combine(_orm(True), RULE_BAD, "both", None)
    assert result.correct is False and result.error_step is None
    assert "orm says True" in result.analysis and "Rule check: mismatch: got 6, expected 5" in result.analysis


def test_score_threshold() -> None:
    low = combine(_orm(True, score=0.4), RULE_OK, "orm", 0.5)
    assert low.correct is False and "below threshold" in low.analysis
    high = combine(_orm(True, score=0.9), RULE_OK, "orm", 0.5)
    assert high.correct is True and high.error_step is None
    no_score = combine(_orm(True), RULE_OK, "orm", 0.5)
    assert no_score.correct is True  # a threshold only applies to a score that was given
    # With "either", the rule can still rescue a low-score ORM verdict.
    assert combine(_orm(True, score=0.1), RULE_OK, "either", 0.5).correct is True


def test_combine_rejects_unknown_policy() -> None:
    with pytest.raises(ValueError):
        combine(_orm(True), RULE_OK, "majority", None)  # type: ignore[arg-type]


def test_end_to_end_orm_reply_to_combined_verdict() -> None:
    path = "Step 1: The area is 3 * 4 = 12.\nStep 2: Half of it is 5.\nThe final answer is \\boxed{5}."
    steps = split_steps(path)
    reply = '```json\n{"correct": false, "error_step": 2, "analysis": "12 / 2 = 6, not 5."}\n```'
    orm = parse_verdict(reply, n_steps=len(steps))
    assert orm.error_step is not None and "Half of it is 5." in steps[orm.error_step - 1]
    from mathse.answers.extraction import check_path

    final = combine(orm, rule_verdict(check_path(path, "6")), "both", 0.5)
    assert final.correct is False and final.error_step == 2
