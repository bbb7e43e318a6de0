"""--stage check on the command line, and the acceptance case: a seed file holding a demo test problem
(its picture re-encoded, its question reworded) is flagged, and with action drop it never reaches
the teacher or training."""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any

import pytest

from mathse.cli import main, pipeline
from mathse.run.config_loading import load_config
from mathse.run.storage import iter_jsonl
from mathse.testing.openai_server import FakeOpenAIServer, last_user_text
from tests.conftest import write_run_config
from tests.data.test_checking import leaky_data


@pytest.fixture
def leaky_config(tmp_path: Path, tiny_model: Path):
    paths = leaky_data(tmp_path / "data")

    def make(**sections: Any) -> Path:
        bench = {"name": "demo-test", "format": "jsonl", "path": str(paths["test"])}
        return write_run_config(tmp_path, tiny_model, paths["seed"], paths["pool"], eval={"benchmarks": [bench]},
                                **sections)

    return make


def test_check_stage_runs_once_reruns_for_free_and_dry_run_writes_nothing(leaky_config, capsys) -> None:
    config = leaky_config()
    out_dir = config.parent / "output"
    assert main(["--stage", "check", "--config", str(config), "--dry-run"]) == 0
    assert "[dry-run] check (would run)" in capsys.readouterr().out and not out_dir.exists()
    assert main(["--stage", "check", "--config", str(config)]) == 0
    out = capsys.readouterr().out
    assert "seed: 12 problems, 1 contaminated" in out and "leak-1 ~ demo-test test-0003" in out
    assert {r["id"] for r in iter_jsonl(out_dir / "check" / "pairs.jsonl")} == {"leak-1", "seed-copy", "pool-copy"}
    assert main(["--stage", "check", "--config", str(config)]) == 0
    assert "already done, nothing to do (3 problems flagged" in capsys.readouterr().out
    assert pipeline(load_config(config))[0] == "check"
    assert "check" not in pipeline(load_config(leaky_config(data_check={"enabled": False})))


def test_a_misspelt_data_check_key_is_named_with_a_suggestion(leaky_config, capsys) -> None:
    config = leaky_config(data_check={"actoin": "drop"})
    assert main(["--stage", "check", "--config", str(config)]) == 2
    err = capsys.readouterr().err
    assert "data_check.actoin" in err and "action" in err
    assert main(["--stage", "check", "--config", str(leaky_config(data_check={"action": "delete"}))]) == 2
    assert "data_check.action" in capsys.readouterr().err


def teacher_reply(body: dict[str, Any]) -> str:
    answer = re.search(r"The reference answer is: (.+)", last_user_text(body)).group(1).strip()
    return f"Step 1: Add the numbers.\nThe final answer is \\boxed{{{answer}}}"


@pytest.mark.slow
def test_with_drop_a_contaminated_seed_problem_never_reaches_the_teacher_or_training(leaky_config, capsys) -> None:
    with FakeOpenAIServer(replies=teacher_reply) as teacher:
        section = {"base_url": teacher.base_url, "model": "gpt-4o", "api_key": "sk-test", "max_retries": 1}
        config = leaky_config(teacher=section, data_check={"action": "drop"})
        assert main(["--stage", "distill", "--config", str(config)]) == 0
        out_dir = config.parent / "output"
        seeds = [json.loads(line) for line in Path(load_config(config).data.seed_file).read_text().splitlines()]
        pending = {s["id"] for s in seeds if not s.get("solution")}
        assert "leak-1" in pending  # without the check the teacher would be asked for it
        assert teacher.chat_calls == len(pending) - 1
        leaked = "Compute the value of"
        assert all(leaked not in json.dumps(body) for body in teacher.requests)
        for path in load_config(config).api_cache_dir.rglob("*"):  # the answer cache never saw it either
            assert not path.is_file() or leaked.encode() not in path.read_bytes(), path
        d_sft = {r["id"] for r in iter_jsonl(out_dir / "distill" / "d_sft.jsonl")}
        assert "leak-1" not in d_sft and "seed-copy" not in d_sft and "seed-0000" in d_sft
        assert d_sft == {s["id"] for s in seeds} - {"leak-1", "seed-copy"}
        dataset = (out_dir / "data" / "mathse_stage0.json").read_text()
        assert leaked not in dataset and (out_dir / "sft_model_stage0" / "model.safetensors").is_file()
        printed = capsys.readouterr().out
        assert "1 contaminated (in a benchmark), 1 duplicates of an earlier problem; 2 dropped" in printed
        # The report shows the counts with examples.
        assert main(["--stage", "report", "--config", str(config)]) == 0
        report = (out_dir / "report" / "report.md").read_text()
        section_md = report[report.index("## Data check: duplicates and contamination"):]
        assert "| seed | 12 | 1 | 1 | 2 |" in section_md and "| pool | 17 | 0 | 1 | 1 |" in section_md
        assert "contamination: seed `leak-1` ~ demo-test `test-0003`" in section_md
        assert "duplicate: seed `seed-copy` ~ seed `seed-0000`" in section_md
        # A rerun: the check is not redone, nothing is asked again.
        calls = teacher.chat_calls
        assert main(["--stage", "distill", "--config", str(config)]) == 0
        assert teacher.chat_calls == calls and "checking the data again" not in capsys.readouterr().out
