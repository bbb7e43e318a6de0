"""`--stage orm` end to end: labelled paths -> ORM dataset -> real `llamafactory-cli train` -> local judge."""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any

import pytest

from mathse.cli import main
from mathse.judging.judge import JudgeItem, PathJudge, open_journal
from mathse.judging.steps import split_steps
from mathse.judging.verdict import ORM_SYSTEM_PROMPT, build_orm_prompt, format_orm_response, parse_verdict
from mathse.run.config_loading import load_config
from mathse.run.records import read_problems
from mathse.run.storage import is_done

BAD_PATH = (
    "Step 1: Look at the figure.\nStep 2: Guess a number instead of working it out.\nThe final answer is \\boxed{0}"
)


def labelled_paths(seed_file: Path) -> list[dict[str, Any]]:
    """Two labelled paths per demo problem: a right one and one whose step 2 is wrong.

    Image paths stay relative to the demo data folder (resolved through data.image_root).
    """
    rows: list[dict[str, Any]] = []
    for line in seed_file.read_text().splitlines():
        problem = json.loads(line)
        good = problem.get("solution") or (
            f"Step 1: Look at the figure.\nStep 2: Work it out.\nThe final answer is \\boxed{{{problem['answer']}}}"
        )
        base = {k: problem[k] for k in ("id", "question", "images", "answer")}
        rows.append({**base, "path": good, "correct": True, "error_step": None, "analysis": "Every step holds."})
        analysis = "Step 2 guesses instead of reading the figure; compute the value from the image."
        rows.append({**base, "path": BAD_PATH, "correct": False, "error_step": 2, "analysis": analysis})
    rows[-1].pop("answer")  # the reference answer is optional
    return rows


def write_rows(path: Path, rows: list[dict[str, Any]]) -> Path:
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return path


def orm_sections(train_file: Path, demo_data: tuple[Path, Path], **orm: Any) -> dict[str, Any]:
    seed, pool = demo_data
    return {
        "data": {"seed_file": str(seed), "pool_file": str(pool), "image_root": str(seed.parent)},
        "orm": {"train_file": str(train_file), **orm},
    }


@pytest.mark.slow
def test_train_orm_then_judge_with_it_locally(run_config, demo_data, tmp_path: Path, capsys) -> None:
    rows = labelled_paths(demo_data[0])
    train_file = write_rows(tmp_path / "labelled.jsonl", rows)
    model_dir = tmp_path / "output" / "orm_model"
    local = {"model_name_or_path": str(model_dir), "max_new_tokens": 24}
    config = run_config(
        **orm_sections(train_file, demo_data, backend="local", policy="either", local=local),
        llama_factory={"cutoff_len": 1024},
    )
    assert main(["--stage", "orm", "--config", str(config)]) == 0
    printed = capsys.readouterr().out
    n = len(rows)
    assert f"orm: done: {n} labelled paths ({n // 2} correct / {n // 2} incorrect, 50% correct" in printed
    assert f"ORM checkpoint: {model_dir}" in printed
    assert is_done(model_dir) and (model_dir / "model.safetensors").is_file()

    # The dataset is exactly the ORM contract of mathse.judging.verdict.
    dataset = json.loads((tmp_path / "output" / "data" / "mathse_orm.json").read_text())
    assert len(dataset) == n
    system, user, assistant = dataset[1]["messages"]
    assert system == {"role": "system", "content": ORM_SYSTEM_PROMPT}
    expected_prompt = build_orm_prompt(rows[1]["question"], split_steps(BAD_PATH), rows[1]["answer"])
    assert user["content"] == "<image>" + expected_prompt and "Step 2: Guess a number" in user["content"]
    target = parse_verdict(assistant["content"], 2)
    assert (target.correct, target.error_step) == (False, 2) and assistant["content"] == format_orm_response(target)
    assert Path(dataset[1]["images"][0]).is_absolute() and Path(dataset[1]["images"][0]).is_file()
    assert "## Reference answer" not in dataset[-1]["messages"][1]["content"]

    # The trained ORM loads in LLaMA-Factory's ChatModel and judges: parsed or counted unparseable.
    cfg = load_config(config)
    pool = read_problems(demo_data[1])[:2]
    items = [JudgeItem(f"{p.id}#0", p, BAD_PATH) for p in pool]
    with open_journal(cfg, "orm-smoke") as journal, PathJudge(cfg, "orm-smoke") as judge:
        stats = judge.judge(items, journal)
        rows_out = list(journal.values())
    assert (stats.judged, stats.failed) == (2, 0)
    assert all(isinstance(r["orm"]["raw"], str) for r in rows_out)
    assert stats.unparseable == sum(1 for r in rows_out if not r["orm"]["parsed"])
    assert all(r["rule"]["correct"] is False for r in rows_out)  # \boxed{0} is never a demo answer

    # Rerun: nothing to do, and says so.
    mtime = (model_dir / "model.safetensors").stat().st_mtime_ns
    assert main(["--stage", "orm", "--config", str(config)]) == 0
    assert "orm: already done, nothing to do" in capsys.readouterr().out
    assert (model_dir / "model.safetensors").stat().st_mtime_ns == mtime


def test_dry_run_prints_sizes_and_command_and_writes_nothing(run_config, demo_data, tmp_path: Path, capsys) -> None:
    train_file = write_rows(tmp_path / "labelled.jsonl", labelled_paths(demo_data[0]))
    config = run_config(**orm_sections(train_file, demo_data))
    assert main(["--stage", "orm", "--config", str(config), "--dry-run"]) == 0
    printed = capsys.readouterr().out
    assert "[dry-run] orm: 16 labelled paths" in printed and "8 correct / 8 incorrect" in printed
    assert re.search(r"\$ llamafactory-cli train \S+/orm/train_orm\.yaml", printed)
    assert "dataset: mathse_orm" in printed and re.search(r"output_dir: \S+/orm_model", printed)
    assert not (tmp_path / "output").exists()


@pytest.mark.parametrize(
    ("mutate", "reason"),
    [
        (lambda line: line[:-5], "invalid JSON"),
        (
            lambda line: line.replace('"correct": false', '"correct": "false"'),
            "correct: Input should be a valid boolean",
        ),
        (lambda line: line.replace('"error_step": 2', '"error_step": 7'), "error_step: 7 is beyond the path's 2 steps"),
        (lambda line: line.replace('"correct": false', '"correct": true'), "error_step: must be null when correct"),
        (lambda line: line.replace(".png", ".jpg"), "image not found"),
    ],
)
def test_bad_train_file_line_names_file_and_line_and_writes_nothing(
    run_config, demo_data, tmp_path: Path, capsys, mutate, reason: str
) -> None:
    lines = [json.dumps(r) for r in labelled_paths(demo_data[0])]
    bad = tmp_path / "bad.jsonl"
    bad.write_text("\n".join([lines[0], mutate(lines[1]), *lines[2:]]) + "\n")
    config = run_config(**orm_sections(bad, demo_data))
    assert main(["--stage", "orm", "--config", str(config)]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith(f"error: {bad}:2: ") and reason in err and "\n" not in err
    assert not (tmp_path / "output").exists()


def test_without_train_file_the_data_needs_m0(run_config, capsys) -> None:
    assert main(["--stage", "orm", "--config", str(run_config())]) == 2
    err = capsys.readouterr().err
    assert "orm: M0 is not trained yet" in err and "run --stage distill first" in err


@pytest.mark.slow
def test_an_over_long_path_is_left_out_and_training_runs(run_config, demo_data, tmp_path: Path, capsys) -> None:
    """At the demo's ORM cutoff_len one very long path would lose its image tokens: left out, listed."""
    rows = labelled_paths(demo_data[0])
    long_path = "\n".join(f"Step {i}: count the dots in the figure again, one by one." for i in range(1, 60))
    rows.append({**rows[0], "id": "long-one", "path": long_path + "\nThe final answer is \\boxed{3}",
                 "correct": False, "error_step": 1, "analysis": "Miscounted the dots. " * 1500})
    train_file = write_rows(tmp_path / "labelled.jsonl", rows)
    config = run_config(**orm_sections(train_file, demo_data))  # the demo's trainings.orm.cutoff_len
    cutoff = load_config(config).trainings.orm.cutoff_len
    assert main(["--stage", "orm", "--config", str(config)]) == 0
    out = tmp_path / "output"
    printed = capsys.readouterr().out
    assert f"dataset mathse_orm: left out 1 examples whose image tokens do not fit trainings.orm.cutoff_len={cutoff}" \
        in printed
    listed = [json.loads(line) for line in (out / "data" / "mathse_orm.too_long.jsonl").read_text().splitlines()]
    assert [r["id"] for r in listed] == ["long-one"] and listed[0]["tokens"] > 1280
    assert len(json.loads((out / "data" / "mathse_orm.json").read_text())) == len(rows) - 1
    assert is_done(out / "orm_model")


def test_the_orm_training_takes_its_own_trainings_settings(run_config) -> None:
    """trainings.orm reaches the ORM's YAML (its long prompts need their own cutoff_len)."""
    from mathse.stages import orm as orm_stage

    cfg = load_config(run_config(llama_factory={"cutoff_len": 256}, trainings={"orm": {"cutoff_len": 1500}}))
    job = orm_stage.train_job(cfg)
    assert job.args["cutoff_len"] == 1500 and job.origins["cutoff_len"] == "trainings.orm"
