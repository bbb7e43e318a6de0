"""Stage 1 end to end: a real teacher HTTP server, real `llamafactory-cli train`, resumable."""

from __future__ import annotations

import json
import re
from typing import Any

import pytest

from mathse.cli import main
from mathse.run.config_loading import load_config
from mathse.run.records import read_problems
from mathse.run.storage import is_done, iter_jsonl
from mathse.run.timing import StageTimer
from mathse.stages import distill
from mathse.testing.openai_server import FakeOpenAIServer, last_user_text

SECRET = "sk-mathse-test-SECRET-4242"


def teacher_reply(body: dict[str, Any]) -> str:
    """A scripted teacher: right for numeric answers, wrong for multiple choice (to be filtered)."""
    answer = re.search(r"The reference answer is: (.+)", last_user_text(body)).group(1).strip()
    if answer in "ABCD":
        answer = "E"
    return f"Step 1: Look at the figure.\nStep 2: Work it out.\nThe final answer is \\boxed{{{answer}}}"


@pytest.fixture
def teacher(monkeypatch: pytest.MonkeyPatch):
    monkeypatch.setenv("MATHSE_TEST_KEY", SECRET)
    with FakeOpenAIServer(replies=teacher_reply) as server:
        yield server


def teacher_section(server: FakeOpenAIServer) -> dict[str, Any]:
    return {"base_url": server.base_url, "model": "gpt-4o", "api_key": "${MATHSE_TEST_KEY}", "max_retries": 1}


@pytest.mark.slow
def test_distill_end_to_end_and_rerun(run_config, teacher, demo_data, capsys) -> None:
    config = run_config(teacher=teacher_section(teacher), pricing={"gpt-4o": {"prompt_per_1m": 2.5}})
    assert main(["--stage", "distill", "--config", str(config)]) == 0
    out_dir = config.parent / "output"
    seeds = [json.loads(line) for line in demo_data[0].read_text().splitlines()]
    pending = [s for s in seeds if not s.get("solution")]
    mc = [s for s in pending if s["answer"] in "ABCD"]

    # One teacher call per problem without a solution, with its image as a data URL and the key.
    assert teacher.chat_calls == len(pending)
    parts = teacher.requests[0]["messages"][1]["content"]
    assert parts[0]["type"] == "image_url" and parts[0]["image_url"]["url"].startswith("data:image/png;base64,")

    rows = list(iter_jsonl(out_dir / "distill" / "d_sft.jsonl"))
    dropped = list(iter_jsonl(out_dir / "distill" / "dropped.jsonl"))
    assert len(rows) == len(seeds) - len(mc) and {d["id"] for d in dropped} == {s["id"] for s in mc}
    assert all("mismatch" in d["reason"] for d in dropped)
    assert {r["origin"] for r in rows} == {"seed", "teacher"}
    dataset = json.loads((out_dir / "data" / "mathse_stage0.json").read_text())
    assert len(dataset) == len(rows) and dataset[0]["messages"][0]["content"].startswith("<image>")

    model_dir = out_dir / "sft_model_stage0"
    assert is_done(model_dir) and (model_dir / "model.safetensors").is_file()
    printed = capsys.readouterr().out
    assert f"M0 checkpoint: {model_dir}" in printed and f"D_SFT {len(rows)} examples" in printed
    usage = json.loads((out_dir / "usage.json").read_text())
    assert "distill" in json.dumps(usage)

    # The key never reaches disk: saved config, logs, cache, ledger, datasets.
    for path in out_dir.rglob("*"):
        if path.is_file():
            assert SECRET.encode() not in path.read_bytes(), path

    # Rerun: nothing to do, no call made, said so.
    assert main(["--stage", "distill", "--config", str(config)]) == 0
    assert teacher.chat_calls == len(pending)
    assert "already done" in capsys.readouterr().out


@pytest.mark.slow
def test_killed_after_dataset_resumes_without_teacher_calls(run_config, teacher) -> None:
    config = run_config(teacher=teacher_section(teacher))
    out_dir = config.parent / "output"
    # First run trains into a model dir we then invalidate, as if killed mid-training.
    assert main(["--stage", "distill", "--config", str(config)]) == 0
    calls = teacher.chat_calls
    (out_dir / "sft_model_stage0" / ".mathse_done.json").unlink()
    (out_dir / "distill" / ".mathse_done.json").unlink()  # and as if killed before the data marker
    assert main(["--stage", "distill", "--config", str(config)]) == 0
    assert teacher.chat_calls == calls  # every teacher reply came from the cache
    assert is_done(out_dir / "sft_model_stage0")


def test_dry_run_prints_command_and_yaml_and_trains_nothing(run_config, capsys) -> None:
    config = run_config()
    assert main(["--stage", "distill", "--config", str(config), "--dry-run"]) == 0
    printed = capsys.readouterr().out
    assert re.search(r"\$ llamafactory-cli train \S+/distill/train_m0\.yaml", printed)
    assert "stage: sft" in printed and "template: qwen2_vl" in printed and "dataset: mathse_stage0" in printed
    assert "would go to the teacher" in printed and "batch mode" not in printed
    assert not (config.parent / "output").exists()
    # Batch mode changes how long the stage takes and what it costs: the plan says so.
    batch = run_config(teacher={"base_url": "http://127.0.0.1:9/v1", "model": "gpt-4o", "mode": "batch"})
    assert main(["--stage", "distill", "--config", str(batch), "--dry-run"]) == 0
    assert "(gpt-4o at http://127.0.0.1:9/v1, batch mode: OpenAI Batch API (24h window, batch price))" in \
        capsys.readouterr().out


def test_corrupt_jsonl_line_names_file_and_line_and_writes_nothing(run_config, demo_data, tmp_path, capsys) -> None:
    lines = demo_data[0].read_text().splitlines()
    images_dir = demo_data[0].parent
    bad = tmp_path / "bad.jsonl"
    bad.write_text("\n".join([lines[0], lines[1][:-5], *lines[2:]]) + "\n")
    config = run_config(data={"seed_file": str(bad), "image_root": str(images_dir)})
    assert main(["--stage", "distill", "--config", str(config)]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith(f"error: {bad}:2: invalid JSON") and "\n" not in err
    assert not (config.parent / "output").exists()


def test_teacher_needed_but_not_configured(run_config, capsys) -> None:
    config = run_config(teacher=None)
    assert main(["--stage", "distill", "--config", str(config)]) == 2
    assert "teacher: required" in capsys.readouterr().err


@pytest.mark.slow
def test_unauthorized_teacher_stops_marks_nothing_and_rerun_equals_clean_run(
    run_config, demo_data, tmp_path, capsys
) -> None:
    with FakeOpenAIServer(replies=teacher_reply, api_key="sk-right") as teacher:
        section = {"base_url": teacher.base_url, "model": "gpt-4o", "max_retries": 1, "concurrency": 2}
        clean = run_config(teacher={**section, "api_key": "sk-right"}, run={"output_dir": str(tmp_path / "clean")})
        assert main(["--stage", "distill", "--config", str(clean)]) == 0
        calls = teacher.chat_calls
        capsys.readouterr()

        config = run_config(teacher={**section, "api_key": "sk-wrong"})
        assert main(["--stage", "distill", "--config", str(config)]) == 2
        err = capsys.readouterr().err.strip()
        assert "\n" not in err
        assert f"error: distill: endpoint {teacher.base_url} (model gpt-4o) answered HTTP 401" in err
        assert teacher.chat_calls - calls <= 3 + 2  # stopped after the first few
        out = tmp_path / "output"
        assert not is_done(out / "distill") and not (out / "distill" / "d_sft.jsonl").exists()
        assert not (out / "sft_model_stage0").exists()

        config = run_config(teacher={**section, "api_key": "sk-right"})
        assert main(["--stage", "distill", "--config", str(config)]) == 0
    for name in ("distill/d_sft.jsonl", "distill/dropped.jsonl", "data/mathse_stage0.json"):
        assert (out / name).read_text() == (tmp_path / "clean" / name).read_text(), name
    assert is_done(out / "sft_model_stage0")


def test_batch_mode_d_sft_equals_live_mode_even_when_a_batch_expires(
    run_config, demo_data, tmp_path, capsys, monkeypatch
) -> None:
    """teacher.mode: batch builds the same D_SFT rows as live mode; an expired batch loses nothing."""
    monkeypatch.setenv("MATHSE_TEST_KEY", SECRET)
    problems = read_problems(demo_data[0])
    pending = [p for p in problems if not p.solution]
    built = {}
    with FakeOpenAIServer(replies=teacher_reply, batch_outcomes=["expired"]) as server:
        for mode in ("live", "batch"):
            section = {**teacher_section(server), "mode": mode, "batch": {"poll_interval_s": 0.02}}
            cfg = load_config(run_config(teacher=section, run={"output_dir": str(tmp_path / mode)},
                                         pricing={"gpt-4o": {"prompt_per_1m": 2.0, "completion_per_1m": 8.0}}))
            stage_dir = tmp_path / mode / "distill"
            built[mode] = distill.build_d_sft(cfg, distill.check_seed(cfg), stage_dir, StageTimer())
            built[mode]["rows"] = list(iter_jsonl(tmp_path / mode / "distill" / "d_sft.jsonl"))
            built[mode]["usage"] = json.loads((tmp_path / mode / "usage.json").read_text())
        assert server.chat_calls == len(pending)  # live mode's calls only
        assert len(server.batch_answers) == len(set(server.batch_answers)) == len(pending)
        assert [b["status"] for b in server.batches.values()] == ["expired", "completed"]
    assert built["batch"]["rows"] == built["live"]["rows"] and built["batch"]["teacher_failed"] == 0
    assert built["batch"]["d_sft"] == built["live"]["d_sft"] > len(problems) - len(pending)
    live, batch = (built[m]["usage"]["stages"]["distill"]["gpt-4o"] for m in ("live", "batch"))
    assert batch["batch_answered"] == len(pending) and batch["cost_usd"] == pytest.approx(live["cost_usd"] / 2)
    assert "distill batch: 2 batches submitted" in capsys.readouterr().out
