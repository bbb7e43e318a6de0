"""Stage 3 data: prompts carry the ORM's diagnosis, the ORM re-validates, rows and formats, resume."""

from __future__ import annotations

import json
import os
import re
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import pytest

from mathse.cli import main
from mathse.judging.verdict import Verdict, format_orm_response
from mathse.run.records import JudgedPathRow, SftRow, read_problems
from mathse.run.storage import atomic_write_jsonl, iter_jsonl
from mathse.stages.reflect import split_reply
from mathse.testing.openai_server import FakeHTTPError, FakeOpenAIServer, last_user_text
from tests.conftest import PROJECT_ROOT


def teacher_reply(body: dict[str, Any]) -> str:
    """Corrects toward the reference answer (read from the draft's problem), except for dots."""
    text = last_user_text(body)
    question = re.search(r"Problem: (.+?)\n\nStudent", text, re.S).group(1)
    answer = ANSWERS[question]
    if "dots" in question:
        answer = "999"  # a wrong correction: the re-validation must drop it
    return (
        "Reflection: The student misread the figure in the flagged step.\n\n"
        f"Corrected solution:\nStep 1: Read the figure again.\nThe final answer is \\boxed{{{answer}}}"
    )


ANSWERS: dict[str, str] = {}


@pytest.fixture
def evolved(tmp_path: Path, demo_data, run_config):
    """An output dir as evolve leaves it: D_SFT and rejected paths (two drafts for some problems)."""
    problems = read_problems(demo_data[1])[:6]
    ANSWERS.update({p.question: p.answer for p in problems})
    out = tmp_path / "output" / "evolve"
    rejected = []
    for i, p in enumerate(problems):
        for sample in range(2 if i % 2 == 0 else 1):
            rejected.append(JudgedPathRow(
                id=p.id, question=p.question, images=list(p.images), answer=p.answer, round=1,
                sample=sample, prompt=f"{p.question}\n\nSolve.", verdict_source="orm", orm_raw="{}",
                reasoning=f"Step 1: I count wrongly (draft {sample}).\nStep 2: So it is 0.\n"
                "The final answer is \\boxed{0}",
                error_step=1, analysis=f"Miscounted the objects in draft {sample}.",
            ).to_json())
    atomic_write_jsonl(out / "sft_rejected.jsonl", rejected)
    atomic_write_jsonl(out / "d_sft.jsonl", [
        SftRow(id="s1", prompt="q?", images=[], answer="1", response="Step 1: 1.", origin="seed").to_json(),
    ])
    return rejected, problems


def sections(server: FakeOpenAIServer, fmt: str = "corrected") -> dict[str, Any]:
    return {
        "teacher": {"base_url": server.base_url, "model": "gpt-4o", "max_retries": 1, "concurrency": 2},
        "orm": {"backend": "rule", "policy": "rule"},
        "reflect": {"format": fmt},
    }


@pytest.mark.parametrize("fmt", ["corrected", "reflection"])
def test_reflection_rows_prompt_revalidation_and_formats(evolved, run_config, fmt: str) -> None:
    rejected, problems = evolved
    with FakeOpenAIServer(replies=teacher_reply) as server:
        config = run_config(**sections(server, fmt))
        assert main(["--stage", "reflect", "--config", str(config)]) == 0
        prompts = [last_user_text(b) for b in server.requests]
        assert server.chat_calls == len(rejected)
    # the prompt carries the question, the numbered draft, the error step and the analysis
    first = next(p for p in prompts if "draft 0" in p and problems[0].question in p)
    assert "Step 1: I count wrongly (draft 0)." in first and "Step 2: So it is 0." in first
    assert "first error at step 1: I count wrongly (draft 0)." in first
    assert "Miscounted the objects in draft 0." in first
    assert all(b["messages"][0]["content"][0]["type"] == "image_url" for b in server.requests)

    out = config.parent / "output"
    rows = list(iter_jsonl(out / "orm_reflections" / "reflection_rows.jsonl"))
    dropped = list(iter_jsonl(out / "orm_reflections" / "reflection_dropped.jsonl"))
    dots = {p.id for p in problems if "dots" in p.question}
    assert {r["id"] for r in rows} == {p.id for p in problems} - dots
    assert {d["id"] for d in dropped} == dots and all("rejected" in d["reason"] for d in dropped)
    for row in rows:
        assert set(row) >= {"instruction", "input", "draft", "reflection", "output"}
        assert row["reflection"] == "The student misread the figure in the flagged step."
        assert row["output"].startswith("Step 1: Read the figure again.")
    # several drafts of one question are separate rows
    for pid in {r["id"] for r in rows}:
        drafts = [x["reasoning"] for x in rejected if x["id"] == pid]
        assert sorted(r["draft"] for r in rows if r["id"] == pid) == sorted(drafts)
    assert any(len([x for x in rejected if x["id"] == r["id"]]) == 2 for r in rows)

    fused = list(iter_jsonl(out / "reflection_sft.jsonl"))
    assert len(fused) == 1 + len(rows) and fused[0]["origin"] == "seed"
    dataset = json.loads((out / "data" / "mathse_reflection_sft.json").read_text())
    target = dataset[1]["messages"][-1]["content"]
    if fmt == "corrected":
        assert target.startswith("Step 1: Read the figure again.") and "Reflection:" not in target
    else:
        # question -> draft -> the ORM's diagnosis -> reflection + corrected path: the draft is an
        # earlier turn, never the target, and the final training masks every earlier turn.
        system_free = dataset[1]["messages"]
        assert [m["role"] for m in system_free] == ["user", "assistant", "user", "assistant"]
        assert system_free[0]["content"].startswith("<image>") and system_free[2]["content"].count("<image>") == 0
        assert system_free[1]["content"] == rows[0]["draft"] and "I count wrongly" not in target
        assert "first error is at step 1" in system_free[2]["content"]
        assert "Miscounted the objects" in system_free[2]["content"]
        assert target.startswith("Reflection: The student misread") and target.endswith(rows[0]["output"])
        from mathse.run.config_loading import load_config
        from mathse.stages.final import train_job

        (out / "sft_model_final").mkdir()  # train_job only needs the Stage-2 checkpoint to exist
        assert train_job(load_config(config)).args["mask_history"] is True
    stats = json.loads((out / "reflect" / "stats.json").read_text())
    assert stats["sent"] == len(rejected) and stats["kept"] == len(rows)


def test_split_reply_formats() -> None:
    assert split_reply("Reflection: a\nCorrected solution:\nStep 1: b") == ("a", "Step 1: b")
    assert split_reply("**Reflection:** a\n\n**Corrected solution:**\nStep 1: b") == ("a", "Step 1: b")
    assert split_reply("just a solution with no parts") is None
    assert split_reply("Reflection: a\nCorrected solution:") is None


def test_identical_drafts_are_sent_once_and_teacher_failure_is_counted(evolved, run_config) -> None:
    rejected, _ = evolved
    rejected.append({**rejected[0], "round": 2})  # the same draft again in a later round
    atomic_write_jsonl(run_config().parent / "output" / "evolve" / "sft_rejected.jsonl", rejected)
    with FakeOpenAIServer(replies=teacher_reply) as server:
        assert main(["--stage", "reflect", "--config", str(run_config(**sections(server)))]) == 0
        assert server.chat_calls == len(rejected) - 1
    dropped = list(iter_jsonl(run_config().parent / "output" / "orm_reflections" / "reflection_dropped.jsonl"))
    assert any(d["reason"] == "duplicate draft" for d in dropped)


def test_reflect_before_evolve_is_a_clear_error(run_config, capsys) -> None:
    assert main(["--stage", "reflect", "--config", str(run_config())]) == 2
    assert "run --stage evolve first" in capsys.readouterr().err


def test_killed_midway_rerun_repeats_no_teacher_call(evolved, run_config, tmp_path: Path) -> None:
    rejected, _ = evolved
    with FakeOpenAIServer(replies=teacher_reply, latency_s=0.4) as server:
        section = sections(server)
        section["teacher"]["concurrency"] = 1
        config = run_config(**section)
        journal = tmp_path / "output" / "reflect" / "teacher.jsonl"
        cmd = [sys.executable, "prepare_reflection_data.py", "--config", str(config)]
        env = {**os.environ, "PYTHONPATH": str(PROJECT_ROOT)}
        proc = subprocess.Popen(cmd, cwd=PROJECT_ROOT, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        deadline = time.monotonic() + 120
        while not (journal.is_file() and len(journal.read_text().splitlines()) >= 3):
            assert proc.poll() is None and time.monotonic() < deadline
            time.sleep(0.02)
        proc.send_signal(signal.SIGKILL)
        proc.wait()
        answered = len(list(iter_jsonl(journal)))
        calls_at_kill = server.chat_calls
        assert answered < len(rejected)
        rerun = subprocess.run(cmd, cwd=PROJECT_ROOT, env=env, capture_output=True, text=True, timeout=300)
        assert rerun.returncode == 0, rerun.stderr[-2000:]
        # only drafts without a recorded answer were asked again (one answered just before the kill
        # may be in the client's cache but not yet in the journal: then it costs no call either)
        assert server.chat_calls - calls_at_kill <= len(rejected) - answered
    assert len(list(iter_jsonl(journal))) == len(rejected)


def orm_reply(body: dict[str, Any]) -> str:
    """A scripted ORM: a corrected path ending in 999 is wrong at step 1, the rest are right."""
    wrong = "boxed{999}" in last_user_text(body)
    verdict = Verdict(correct=not wrong, error_step=1 if wrong else None, analysis="checked", parsed=True)
    return format_orm_response(verdict)


def api_sections(teacher: FakeOpenAIServer, orm: FakeOpenAIServer, key: str, orm_model: str) -> dict[str, Any]:
    return {
        "teacher": {"base_url": teacher.base_url, "model": "gpt-4o", "max_retries": 1, "concurrency": 2,
                    "api_key": key},
        "orm": {"backend": "api", "policy": "orm",
                "api": {"base_url": orm.base_url, "model": orm_model, "max_retries": 1, "concurrency": 2}},
    }


def outputs(out: Path) -> dict[str, list[dict[str, Any]]]:
    names = ["orm_reflections/reflection_rows.jsonl", "orm_reflections/reflection_dropped.jsonl",
             "reflection_sft.jsonl"]
    return {name: list(iter_jsonl(out / name)) for name in names}


@pytest.mark.parametrize("broken", ["teacher-401", "orm-404"])
def test_endpoint_config_error_stops_and_rerun_equals_clean_run(
    evolved, run_config, tmp_path: Path, capsys, broken: str
) -> None:
    out = tmp_path / "output"
    clean_out = tmp_path / "clean"
    shutil.copytree(out / "evolve", clean_out / "evolve")
    with (FakeOpenAIServer(replies=teacher_reply, api_key="sk-right") as teacher,
          FakeOpenAIServer(replies=orm_reply, models=["orm-model"]) as orm):
        clean = run_config(**api_sections(teacher, orm, "sk-right", "orm-model"), run={"output_dir": str(clean_out)})
        assert main(["--stage", "reflect", "--config", str(clean)]) == 0
        capsys.readouterr()
        calls = teacher.chat_calls, orm.chat_calls

        bad_key, bad_model = ("sk-wrong", "orm-model") if broken == "teacher-401" else ("sk-right", "orm-typo")
        config = run_config(**api_sections(teacher, orm, bad_key, bad_model))
        assert main(["--stage", "reflect", "--config", str(config)]) == 2
        err = capsys.readouterr().err.strip()
        server, model, status = (teacher, "gpt-4o", 401) if broken == "teacher-401" else (orm, "orm-typo", 404)
        assert "\n" not in err and err.startswith("error: reflect: endpoint ")
        assert f"{server.base_url} (model {model}) answered HTTP {status}" in err
        # Stopped after the first few refusals, nothing marked done, no rows written.
        refused = (teacher.chat_calls - calls[0]) if broken == "teacher-401" else (orm.chat_calls - calls[1])
        assert refused <= 3 + 2
        assert not (out / "reflect" / ".mathse_done.json").exists()
        assert not (out / "orm_reflections" / "reflection_rows.jsonl").exists()

        fixed = run_config(**api_sections(teacher, orm, "sk-right", "orm-model"))
        assert main(["--stage", "reflect", "--config", str(fixed)]) == 0
    assert outputs(out) == outputs(clean_out)
    assert outputs(out)["orm_reflections/reflection_rows.jsonl"]


def test_one_request_400_is_a_counted_drop(evolved, run_config) -> None:
    rejected, problems = evolved
    refused = problems[1].question

    def replies(body: dict[str, Any]) -> str:
        if refused in last_user_text(body):
            raise FakeHTTPError(400, "content policy")
        return teacher_reply(body)

    with FakeOpenAIServer(replies=replies) as server:
        config = run_config(**sections(server))
        assert main(["--stage", "reflect", "--config", str(config)]) == 0
    out = config.parent / "output"
    dropped = list(iter_jsonl(out / "orm_reflections" / "reflection_dropped.jsonl"))
    failed = [d for d in dropped if d["reason"].startswith("teacher call failed: HTTP 400")]
    assert {d["id"] for d in failed} == {problems[1].id}
    assert len(failed) == sum(1 for r in rejected if r["id"] == problems[1].id)
    assert (out / "reflect" / ".mathse_done.json").exists()
def test_unknown_revalidation_is_neither_kept_nor_rejected(evolved, run_config) -> None:
    """An ORM verdict on a corrected path that stays unreadable after the re-ask: counted as unknown."""
    rejected, _ = evolved
    with FakeOpenAIServer(replies=teacher_reply) as teacher, FakeOpenAIServer(replies="turtles") as orm:
        api = {"base_url": orm.base_url, "model": "orm", "max_retries": 0}
        config = run_config(**{**sections(teacher), "orm": {"backend": "api", "policy": "orm", "api": api}})
        assert main(["--stage", "reflect", "--config", str(config)]) == 0
        # each distinct corrected path (one per question here) asked, then asked again once
        assert orm.chat_calls == 2 * len({r["id"] for r in rejected})
    out = config.parent / "output"
    assert list(iter_jsonl(out / "orm_reflections" / "reflection_rows.jsonl")) == []
    dropped = list(iter_jsonl(out / "orm_reflections" / "reflection_dropped.jsonl"))
    assert len(dropped) == len(rejected) and all(d["reason"].startswith("unknown:") for d in dropped)
    stats = json.loads((out / "reflect" / "stats.json").read_text())
    assert stats["dropped"] == {"unknown": len(rejected)}


def test_batch_mode_killed_while_batch_in_progress_rerun_submits_nothing_new(evolved, run_config, tmp_path) -> None:
    rejected, _ = evolved
    with FakeOpenAIServer(replies=teacher_reply) as server:
        server.hold_batches = True  # the batch stays in progress until the first run is dead
        section = sections(server)
        section["teacher"].update(mode="batch", batch={"poll_interval_s": 0.05})
        config = run_config(**section)
        batch_journal = tmp_path / "output" / "cache" / "api" / "_batches" / "reflect" / "journal.jsonl"
        cmd = [sys.executable, "prepare_reflection_data.py", "--config", str(config)]
        env = {**os.environ, "PYTHONPATH": str(PROJECT_ROOT)}
        proc = subprocess.Popen(cmd, cwd=PROJECT_ROOT, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        deadline = time.monotonic() + 120
        while not (batch_journal.is_file() and '"created"' in batch_journal.read_text()
                   and [b["status"] for b in server.batches.values()] == ["in_progress"]):
            assert proc.poll() is None and time.monotonic() < deadline
            time.sleep(0.02)
        proc.send_signal(signal.SIGKILL)
        proc.wait()
        server.hold_batches = False
        rerun = subprocess.run(cmd, cwd=PROJECT_ROOT, env=env, capture_output=True, text=True, timeout=300)
        assert rerun.returncode == 0, rerun.stderr[-2000:]
        assert len(server.batches) == 1 and server.chat_calls == 0  # the same batch, polled to its end
        assert sorted(server.batch_answers) == sorted(set(server.batch_answers))
        assert "reflect batch: 0 batches submitted (0 requests)" in rerun.stdout and "1 resumed batches" in rerun.stdout
    teacher = list(iter_jsonl(tmp_path / "output" / "reflect" / "teacher.jsonl"))
    assert len(teacher) == len({t["key"] for t in teacher}) == len(rejected)
    assert (tmp_path / "output" / "reflection_sft.jsonl").is_file()
