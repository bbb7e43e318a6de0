"""Stale results are never reused silently: real stages on the tiny model, inputs changed between runs.

A finished unit's marker records what it consumed (mathse.run.fingerprint). Replacing the pool file
after a round, raising evolve.rounds after reflect ran on round 1, and the reflection data that
then changes under a trained final model are each named in one line, stop the run (exit 2) with
nothing lost, and are redone with --redo. A plain rerun, or a touched file, is not stale.
"""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path
from typing import Any

import pytest

from mathse.cli import main
from mathse.run.storage import is_done, iter_jsonl, read_marker
from mathse.testing.openai_server import FakeOpenAIServer
from tests.conftest import write_run_config

pytestmark = pytest.mark.slow


def teacher_reply(body: dict[str, Any]) -> str:
    return ("Reflection: The first step misreads the figure.\n\n"
            "Corrected solution:\nStep 1: Read the figure.\nThe final answer is \\boxed{1}")


@pytest.fixture(scope="module")
def teacher():
    with FakeOpenAIServer(replies=teacher_reply) as server:
        yield server


def sections(teacher: FakeOpenAIServer, rounds: int = 1) -> dict[str, Any]:
    return {
        "teacher": {"base_url": teacher.base_url, "model": "teacher", "filter_by_answer": False, "max_retries": 1},
        "llama_factory": {"max_steps": 3, "save_steps": 100},
        "inference": {"temperature": 0, "n_paths": 1, "max_new_tokens": 12, "concurrency": 4},
        # No retraining per round: the rounds stay cheap; the rule judges (every wrong path is a draft).
        "evolve": {"rounds": rounds, "batch_size": 4, "retrain": False},
        "reflect": {"revalidate": False},
    }


@pytest.fixture(scope="module")
def distilled(tmp_path_factory, tiny_model, demo_data, teacher) -> Path:
    """Stage 1 finished (M0 trained); each test copies it with its own pool file."""
    root = tmp_path_factory.mktemp("distilled")
    config = configure(root, tiny_model, *demo_data, teacher, rounds=1)
    assert main(["--stage", "distill", "--config", str(config)]) == 0
    return root / "output"


def new_run(distilled: Path, tmp_path: Path, tiny_model, demo_data, teacher, rounds: int = 1) -> tuple[Path, Path]:
    """(config, pool copy) of a run that starts from the distilled one."""
    shutil.copytree(distilled, tmp_path / "output", symlinks=True)
    pool = tmp_path / "pool.jsonl"
    shutil.copy(demo_data[1], pool)
    return configure(tmp_path, tiny_model, demo_data[0], pool, teacher, rounds), pool


def configure(tmp_path: Path, tiny_model, seed: Path, pool: Path, teacher, rounds: int) -> Path:
    data = {"image_root": str(seed.parent)}  # the pool copy's images stay beside the fixture's
    return write_run_config(tmp_path, tiny_model, seed, pool, **sections(teacher, rounds), data=data)


def test_replaced_pool_file_stops_evolve_until_redo(distilled, tmp_path, tiny_model, demo_data, teacher, capsys):
    config, pool = new_run(distilled, tmp_path, tiny_model, demo_data, teacher)
    out = tmp_path / "output"
    round_1 = out / "evolve" / "round_1"
    assert main(["--stage", "evolve", "--config", str(config)]) == 0
    before = read_marker(round_1)
    # A plain rerun, and a touched pool file with the same content, are not stale.
    os.utime(pool, ns=(10**9, 10**9))
    assert main(["--stage", "evolve", "--config", str(config)]) == 0
    assert "stale" not in capsys.readouterr().err and read_marker(round_1) == before

    # A new pool file (the first problems replaced by others): round 1 was sampled from the old one.
    rows = [json.loads(line) for line in pool.read_text().splitlines()]
    pool.write_text("".join(json.dumps({**r, "id": f"new-{r['id']}"}) + "\n" for r in rows))
    assert main(["--stage", "evolve", "--config", str(config)]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1, err
    assert err[0].startswith("error: evolve: stale: round 1: data.pool_file changed (pool.jsonl)")
    assert "--redo evolve" in err[0]
    assert read_marker(round_1) == before  # nothing lost

    assert main(["--stage", "all", "--config", str(config), "--dry-run"]) == 0
    printed = capsys.readouterr().out
    assert "[dry-run] evolve: stale: round 1: data.pool_file changed" in printed
    assert "--redo evolve" in printed
    # --stage all names it before running anything, and runs nothing
    assert main(["--stage", "all", "--config", str(config)]) == 2
    assert "mathse: evolve: stale: round 1" in capsys.readouterr().err
    assert read_marker(round_1) == before

    assert main(["--stage", "evolve", "--config", str(config), "--redo", "evolve"]) == 0
    assert "evolve: stale: round 1" in capsys.readouterr().out
    batch = json.loads((round_1 / "batch.json").read_text())
    assert batch and all(pid.startswith("new-") for pid in batch)
    assert all(row["id"].startswith("new-") for row in iter_jsonl(out / "evolve" / "history.jsonl"))
    assert main(["--stage", "evolve", "--config", str(config)]) == 0  # and now it is current
    assert "stale" not in capsys.readouterr().err


def test_reflect_after_round_1_then_more_rounds(distilled, tmp_path, tiny_model, demo_data, teacher, capsys):
    config, pool = new_run(distilled, tmp_path, tiny_model, demo_data, teacher, rounds=1)
    out = tmp_path / "output"
    for stage in ("evolve", "reflect", "final"):
        assert main(["--stage", stage, "--config", str(config)]) == 0, stage
    sent_1 = read_marker(out / "reflect")["sent"]
    assert sent_1 > 0 and is_done(out / "reflection_model_final")
    capsys.readouterr()

    config = configure(tmp_path, tiny_model, demo_data[0], pool, teacher, rounds=2)
    # reflect ran on round 1 only: with two rounds configured it is stale, and final with it.
    assert main(["--stage", "all", "--config", str(config), "--dry-run"]) == 0
    printed = capsys.readouterr().out
    assert "[dry-run] reflect: stale: reflection data: evolve.rounds: 1 -> 2" in printed
    assert "[dry-run] final: stale once reflect is redone" in printed
    assert "--redo reflect --redo final" in printed
    assert main(["--stage", "reflect", "--config", str(config)]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("error: reflect: stale: reflection data: evolve.rounds: 1 -> 2"), err

    assert main(["--stage", "evolve", "--config", str(config)]) == 0  # round 2; round 1 is kept
    assert is_done(out / "evolve" / "round_2")
    assert main(["--stage", "reflect", "--config", str(config), "--redo", "reflect"]) == 0
    rows = list(iter_jsonl(out / "orm_reflections" / "reflection_rows.jsonl"))
    assert {r["round"] for r in rows} == {1, 2}
    assert read_marker(out / "reflect")["sent"] > sent_1

    # The final model was trained on the round-1 reflection data.
    assert main(["--stage", "final", "--config", str(config)]) == 2
    err = capsys.readouterr().err
    assert "final: stale: final model: dataset mathse_reflection_sft changed" in err and "--redo final" in err
    assert is_done(out / "reflection_model_final")
    assert main(["--stage", "final", "--config", str(config), "--redo", "final"]) == 0
    assert "final: stale: final model" in capsys.readouterr().out  # says what it redoes
    assert main(["--stage", "all", "--config", str(config), "--dry-run"]) == 0
    assert "stale" not in capsys.readouterr().out

    # Back to one round: round 2 is past evolve.rounds; --redo evolve drops it and its data.
    config = configure(tmp_path, tiny_model, demo_data[0], pool, teacher, rounds=1)
    assert main(["--stage", "evolve", "--config", str(config)]) == 2
    assert "evolve: stale: round 2: evolve.rounds is 1" in capsys.readouterr().err
    assert main(["--stage", "evolve", "--config", str(config), "--redo", "evolve"]) == 0
    assert not (out / "evolve" / "round_2").exists() and is_done(out / "evolve" / "round_1")
    assert {row["round"] for row in iter_jsonl(out / "evolve" / "history.jsonl")} == {1}
    assert (out / "sft_model_final").resolve() == (out / "sft_model_stage0").resolve()


# ---------------------------------------------------------------------------------------------
# The ORM stage: a changed hand-made train file, or a changed orm.data block


def test_changed_orm_train_file_after_training_stops_until_redo(run_config, demo_data, tmp_path, capsys) -> None:
    from tests.stages.test_orm import labelled_paths, orm_sections, write_rows

    rows = labelled_paths(demo_data[0])
    train_file = write_rows(tmp_path / "labelled.jsonl", rows)
    tiny = {"max_steps": 3, "save_steps": 100, "cutoff_len": 1024}
    config = run_config(**orm_sections(train_file, demo_data), llama_factory=tiny)
    model = tmp_path / "output" / "orm_model"
    assert main(["--stage", "orm", "--config", str(config)]) == 0
    trained = read_marker(model)
    capsys.readouterr()

    write_rows(train_file, rows[:-2])  # one problem's paths removed
    assert main(["--stage", "orm", "--config", str(config)]) == 2
    captured = capsys.readouterr()
    # The dataset file is rebuilt on the spot (cheap); the model trained on the old one is not reused.
    assert "orm: stale: ORM dataset: orm.train_file changed (labelled.jsonl); redoing it" in captured.out
    err = captured.err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("error: orm: stale: ORM model: dataset mathse_orm changed"), err
    assert "--redo orm" in err[0] and read_marker(model) == trained
    assert main(["--stage", "orm", "--config", str(config), "--redo", "orm"]) == 0
    assert read_marker(model) != trained and read_marker(tmp_path / "output" / "orm")["rows"] == len(rows) - 2
    assert main(["--stage", "orm", "--config", str(config)]) == 0
    assert "orm: already done" in capsys.readouterr().out


def test_changed_orm_data_block_after_the_data_was_built_is_caught(run_config, demo_data, tmp_path, capsys) -> None:
    """The labelled paths record what they were made of; the record is the stage's own (data_inputs)."""
    from mathse.run.config_loading import load_config
    from mathse.run.storage import atomic_write_jsonl, mark_done
    from mathse.stages import orm
    from tests.stages.test_orm import labelled_paths

    data = {"seed_file": str(demo_data[0]), "pool_file": str(demo_data[1]), "image_root": str(demo_data[0].parent)}
    config = run_config(data=data, orm={"backend": "trained", "data": {"paths_per_problem": 4}})
    cfg = load_config(config)
    folder = orm.data_dir(cfg)
    atomic_write_jsonl(folder / "train.jsonl", labelled_paths(demo_data[0]))
    mark_done(folder, {"paths": 16, "consumed": orm.data_inputs(cfg).record()})  # as build_data leaves it

    config = run_config(data=data, orm={"backend": "trained", "data": {"paths_per_problem": 2}})
    assert main(["--stage", "orm", "--config", str(config)]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert err == ["error: orm: stale: labelled paths: orm.data.paths_per_problem: 4 -> 2; rerun with --redo orm "
                   "to discard what is stale and redo it (README: Changed inputs)"]
    assert is_done(folder)  # nothing lost
    assert main(["--stage", "all", "--config", str(config), "--dry-run"]) == 0
    assert "[dry-run] orm: stale: labelled paths: orm.data.paths_per_problem: 4 -> 2" in capsys.readouterr().out
    # --redo orm discards them; rebuilding needs M0, which this run does not have: said so, exit 2.
    assert main(["--stage", "orm", "--config", str(config), "--redo", "orm"]) == 2
    assert "orm: M0 is not trained yet" in capsys.readouterr().err and not folder.exists()
