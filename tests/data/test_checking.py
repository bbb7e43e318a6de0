"""The run's data check: contamination and duplicates found, written, dropped; reruns cost nothing."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
from PIL import Image

from mathse.data.checking import checked_pool, ensure_checked, excluded_ids, stale
from mathse.demo.problems import write_countdown_dataset
from mathse.run import layout
from mathse.run.config_loading import load_config
from mathse.run.storage import iter_jsonl
from tests.conftest import write_run_config


def leaky_data(folder: Path) -> dict[str, Path]:
    """Countdown seed / pool / test files; the seed also holds test-0003 with its picture re-encoded as
    JPEG and its question reworded, and a copy of seed-0000; the pool holds a copy of seed-0001."""
    paths = write_countdown_dataset(folder, {"seed": 10, "pool": 16, "test": 12}, seed=5,
                                    solution_every={"seed": 2})
    seed = [json.loads(line) for line in paths["seed"].read_text().splitlines()]
    pool = [json.loads(line) for line in paths["pool"].read_text().splitlines()]
    leak = [json.loads(line) for line in paths["test"].read_text().splitlines()][3]
    Image.open(folder / leak["images"][0]).convert("RGB").save(folder / "images" / "leak.jpg", "JPEG", quality=70)
    a, b = leak["question"].removeprefix("What is ").rstrip("?").split(" + ")
    seed.append({"id": "leak-1", "question": f"Compute the value of {a} + {b}.", "images": ["images/leak.jpg"],
                 "answer": leak["answer"]})
    seed.append({**seed[0], "id": "seed-copy"})
    pool.append({**{k: v for k, v in seed[1].items() if k != "solution"}, "id": "pool-copy"})
    for name, rows in (("seed", seed), ("pool", pool)):
        paths[name] = folder / f"{name}_leaky.jsonl"
        paths[name].write_text("".join(json.dumps(r) + "\n" for r in rows))
    return paths


@pytest.fixture
def make_cfg(tmp_path: Path, tiny_model: Path):
    paths = leaky_data(tmp_path / "data")

    def make(**data_check: Any):
        bench = {"name": "demo-test", "format": "jsonl", "path": str(paths["test"])}
        config = write_run_config(tmp_path, tiny_model, paths["seed"], paths["pool"],
                                  eval={"benchmarks": [bench]}, data_check=data_check)
        return load_config(config)

    return make


def test_contamination_and_duplicates_are_found_and_written_with_warn(make_cfg, capsys) -> None:
    cfg = make_cfg()
    summary = ensure_checked(cfg)
    rows = list(iter_jsonl(layout.check_pairs_path(cfg)))
    found = {(r["id"], r["kind"], r["other_source"], r["other_id"]) for r in rows}
    assert ("leak-1", "contamination", "demo-test", "test-0003") in found
    assert ("seed-copy", "duplicate", "seed", "seed-0000") in found
    assert ("pool-copy", "duplicate", "seed", "seed-0001") in found
    leak = next(r for r in rows if r["id"] == "leak-1")
    assert "image" in leak["signal"] and leak["image_distance"] <= cfg.data_check.image_distance
    assert {r["id"] for r in rows} == {"leak-1", "seed-copy", "pool-copy"}  # the distinct problems: none
    c = summary["counts"]
    assert (c["seed_checked"], c["seed_contamination"], c["seed_duplicate"], c["pool_duplicate"]) == (12, 1, 1, 1)
    assert c["seed_dropped"] == c["pool_dropped"] == 0 and excluded_ids(cfg, "seed") == frozenset()
    out = capsys.readouterr().out
    assert "1 contaminated" in out and "leak-1 ~ demo-test test-0003" in out
    assert "leak-1" in json.dumps(summary["examples"])


def test_an_unreadable_pool_image_is_counted_named_and_reported_and_no_index_file_is_left(make_cfg, capsys) -> None:
    cfg = make_cfg()
    pool = cfg.data.pool_file
    rows = [json.loads(line) for line in pool.read_text().splitlines()]
    broken = cfg.data.image_root / "images" / "broken.png" if cfg.data.image_root else pool.parent / "images/broken.png"
    broken.write_bytes(b"not a picture")
    rows[2]["images"] = ["images/broken.png"]
    pool.write_text("".join(json.dumps(r) + "\n" for r in rows))
    summary = ensure_checked(cfg)
    assert summary["counts"]["pool_unreadable_images"] == 1 and "seed_unreadable_images" not in summary["counts"]
    assert summary["unreadable"] == [f"{pool}: record {rows[2]['id']!r}: image unreadable: {broken} "
                                     "(UnidentifiedImageError)"]
    assert "pool: 1 image(s) unreadable" in capsys.readouterr().out
    from mathse.reporting.data_check import md_data_check

    lines = md_data_check({"data_check": {**summary, "pairs": "check/pairs.jsonl"}})
    assert any(line.startswith("| pool | 17 |") and line.endswith("| 1 |") for line in lines)
    assert f"- unreadable image: {summary['unreadable'][0]}" in lines
    assert not list(layout.stage_dir(cfg, layout.CHECK).glob("*.sqlite"))  # the working indexes are gone


def test_drop_excludes_the_flagged_problems_from_seed_and_pool(make_cfg) -> None:
    cfg = make_cfg(action="drop")
    ensure_checked(cfg)
    assert excluded_ids(cfg, "seed") == {"leak-1", "seed-copy"}
    assert excluded_ids(cfg, "pool") == {"pool-copy"}
    pool = checked_pool(cfg)
    assert "pool-copy" not in pool and len(pool) == 16


def test_a_rerun_on_unchanged_files_hashes_nothing_and_a_changed_pool_is_checked_again(make_cfg, capsys) -> None:
    cfg = make_cfg()
    ensure_checked(cfg)
    marker = layout.stage_dir(cfg, layout.CHECK) / ".mathse_done.json"
    sketches = {p: p.stat().st_mtime_ns for p in layout.check_sketch_dir(cfg).iterdir()}
    before = marker.read_bytes()
    capsys.readouterr()
    ensure_checked(cfg)
    assert marker.read_bytes() == before and capsys.readouterr().out == ""  # nothing redone, nothing said
    pool = cfg.data.pool_file
    pool.write_text(pool.read_text() + json.dumps({"id": "late", "question": "What is 1 + 1?", "answer": "2"}) + "\n")
    assert stale(cfg) and stale(cfg)[0].auto
    summary = ensure_checked(cfg)
    assert "checking the data again" in capsys.readouterr().out and summary["counts"]["pool_checked"] == 18
    now = {p: p.stat().st_mtime_ns for p in layout.check_sketch_dir(cfg).iterdir()}
    assert all(now[p] == t for p, t in sketches.items())  # seed and benchmark sketches reused as they were
    assert len(now) == len(sketches) + 1  # the new pool's sketches only


def test_disabled_check_does_nothing(make_cfg) -> None:
    cfg = make_cfg(enabled=False, action="drop")
    assert ensure_checked(cfg) is None and stale(cfg) == []
    assert not layout.stage_dir(cfg, layout.CHECK).exists() and excluded_ids(cfg, "seed") == frozenset()
