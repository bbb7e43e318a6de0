"""What a unit consumed: a changed input is named, a resume or a touched file is not stale."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from mathse.run.config_loading import load_config
from mathse.run.errors import StageError
from mathse.run.fingerprint import Inputs, StaleError, check, settle
from mathse.run.storage import is_done, mark_done


@pytest.fixture
def cfg(run_config):
    return load_config(run_config())


def unit(tmp_path: Path, cfg, pool: Path) -> tuple[Path, Inputs]:
    folder = tmp_path / "unit"
    inputs = Inputs().file("data.pool_file", pool).config(cfg, "evolve", exclude={"rounds"})
    mark_done(folder, {"rows": 3, "consumed": inputs.record()})
    return folder, inputs


def test_same_inputs_are_not_stale_and_a_touched_file_with_the_same_content_is_the_same(tmp_path, cfg) -> None:
    pool = tmp_path / "pool.jsonl"
    pool.write_text('{"id": "a"}\n')
    folder, inputs = unit(tmp_path, cfg, pool)
    assert check("u", folder, inputs) is None
    os.utime(pool, ns=(1, 1))  # touched (or copied): same bytes
    assert check("u", folder, inputs) is None


def test_replaced_file_and_changed_config_key_are_named(tmp_path, cfg) -> None:
    pool = tmp_path / "pool.jsonl"
    pool.write_text('{"id": "a"}\n')
    folder, _ = unit(tmp_path, cfg, pool)
    pool.write_text('{"id": "b"}\n')
    cfg.evolve.batch_size = 7
    now = Inputs().file("data.pool_file", pool).config(cfg, "evolve", exclude={"rounds"})
    stale = check("round 1", folder, now)
    assert stale is not None
    assert stale.reasons == ("data.pool_file changed (pool.jsonl)", "evolve.batch_size: 12 -> 7")
    cfg.evolve.rounds = 9  # excluded: does not change what the unit made
    cfg.evolve.batch_size = 12
    pool.write_text('{"id": "a"}\n')
    assert check("round 1", folder, Inputs().file("data.pool_file", pool).config(cfg, "evolve", exclude={"rounds"})) \
        is None


def test_a_redone_upstream_marker_makes_the_unit_stale(tmp_path) -> None:
    upstream = tmp_path / "m0"
    mark_done(upstream, {"job": "train_m0"})
    inputs = Inputs().marker("M0", upstream)
    mark_done(tmp_path / "unit", {"consumed": inputs.record()})
    assert check("u", tmp_path / "unit", inputs) is None
    mark_done(upstream, {"job": "train_m0", "again": True})
    assert check("u", tmp_path / "unit", inputs).reasons == ("M0 was redone since (m0)",)


def test_a_marker_without_a_record_is_trusted(tmp_path) -> None:
    mark_done(tmp_path / "old", {"rows": 1})
    assert check("u", tmp_path / "old", Inputs().value("x", 1)) is None


def test_settle_refuses_in_one_line_unless_redo_then_discards(tmp_path, cfg) -> None:
    pool = tmp_path / "pool.jsonl"
    pool.write_text('{"id": "a"}\n')
    folder, inputs = unit(tmp_path, cfg, pool)
    (tmp_path / "model").mkdir()
    pool.write_text('{"id": "changed"}\n')
    stale = [check("round 1", folder, inputs, discard=(tmp_path / "model",))]
    with pytest.raises(StaleError) as err:
        settle(cfg, "evolve", stale)
    line = str(err.value)
    assert isinstance(err.value, StageError) and "\n" not in line
    assert line.startswith("evolve: stale: round 1: data.pool_file changed (pool.jsonl)")
    assert "--redo evolve" in line and is_done(folder)
    cfg.run.redo = ["evolve"]
    settle(cfg, "evolve", stale)
    assert not is_done(folder) and not (tmp_path / "model").exists()


def test_stale_lines_name_the_finished_stages_built_on_a_stale_one(cfg) -> None:
    from mathse.run.fingerprint import Stale, stale_lines

    evolve = [Stale("round 1", ("data.pool_file changed (pool.jsonl)",), ())]
    orm_dataset = [Stale("ORM dataset", ("orm.train_file changed (t.jsonl)",), (), auto=True)]
    rows = [("orm", orm_dataset, True), ("evolve", evolve, True), ("reflect", [], True), ("final", [], False)]
    lines, blocked, advised = stale_lines(cfg, rows)
    assert lines == [
        "orm: stale: ORM dataset: orm.train_file changed (t.jsonl) (will be redone)",
        "evolve: stale: round 1: data.pool_file changed (pool.jsonl)",
        "reflect: stale once evolve is redone: it was built on evolve's results",
    ]
    assert blocked == ["evolve"] and advised == ["evolve", "reflect"]
    cfg.run.redo = ["evolve"]
    lines, blocked, advised = stale_lines(cfg, rows)
    assert lines[1].endswith("(will be redone)") and blocked == [] and advised == ["reflect"]
