"""Sketches are computed once per file content and settings; a killed sketching run resumes."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from mathse.data.sketches import Item, SketchSettings, content_digest, read_sketches, sketch_file
from mathse.demo.problems import ProblemSpec, render_problem_image
from mathse.run.storage import iter_jsonl


def test_sketch_file_is_made_once_and_a_partial_one_is_resumed(tmp_path: Path) -> None:
    render_problem_image(ProblemSpec("countdown", (1, 2), (56, 56))).save(tmp_path / "a.png")
    items = [Item(f"p{i}", f"What is {i} + 2?", (str(tmp_path / "a.png"),), str(i + 2)) for i in range(5)]
    settings = SketchSettings(num_perm=32)
    made: list[int] = []

    def killed_after_two() -> Iterator[Item]:
        yield from items[:2]
        raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        sketch_file(tmp_path / "cache", "pool", "abc", killed_after_two, settings, "pool.jsonl")
    path = sketch_file(tmp_path / "cache", "pool", "abc", lambda: iter(items), settings, "pool.jsonl", made.append)
    assert made == [1, 2, 3]  # the two sketched before the kill were kept
    sketches = list(read_sketches(path))
    assert [s.id for s in sketches] == [f"p{i}" for i in range(5)] and sketches[3].answer == (5.0,)
    assert sketches[0].numbers == ("0", "2") and len(sketches[0].images) == 1
    again = sketch_file(tmp_path / "cache", "pool", "abc", lambda: iter(()), settings, "pool.jsonl", made.append)
    assert again == path and made == [1, 2, 3]  # cached: nothing read or hashed
    other = sketch_file(tmp_path / "cache", "pool", "abc", lambda: iter(items), SketchSettings(64), "pool.jsonl")
    assert other != path  # other settings, another cache file


def test_many_items_are_sketched_by_worker_processes_in_order_as_one_process_does(tmp_path: Path) -> None:
    render_problem_image(ProblemSpec("countdown", (1, 2), (56, 56))).save(tmp_path / "a.png")
    render_problem_image(ProblemSpec("countdown", (3, 4), (56, 56))).save(tmp_path / "b.png")
    items = [Item(f"p{i}", f"What is {i} + 2?", (str(tmp_path / "ab"[i % 2]) + ".png",), str(i + 2))
             for i in range(700)]  # past the first chunk, done here, into three chunks for the workers
    one = sketch_file(tmp_path / "one", "pool", "abc", lambda: iter(items), SketchSettings(32), "pool.jsonl")
    made: list[int] = []
    two = sketch_file(tmp_path / "two", "pool", "abc", lambda: iter(items), SketchSettings(32), "pool.jsonl",
                      made.append, workers=2)
    assert two.read_bytes() == one.read_bytes() and made == list(range(1, 701))


def test_content_digest_follows_content_not_names(tmp_path: Path) -> None:
    (tmp_path / "a.jsonl").write_text("x\n")
    (tmp_path / "b.jsonl").write_text("x\n")
    assert content_digest([tmp_path / "a.jsonl"]) == content_digest([tmp_path / "b.jsonl"])
    assert content_digest([tmp_path / "a.jsonl"], {"root": 1}) != content_digest([tmp_path / "a.jsonl"])


def test_an_unreadable_image_is_named_and_leaves_the_text_signal(tmp_path: Path) -> None:
    """The check does not stop on it: distill refuses an unreadable seed image, generation counts a pool
    problem's as skipped (tests/test_reliability.py corrupts one on purpose)."""
    (tmp_path / "bad.png").write_bytes(b"not a picture")
    items = [Item("p7", "What is 1 + 1?", (str(tmp_path / "bad.png"),))]
    path = sketch_file(tmp_path / "cache", "seed", "d", lambda: iter(items), SketchSettings(32), "seed.jsonl")
    (row,) = iter_jsonl(path)
    assert row["images"] == [] and row["key"] and len(row["unreadable"]) == 1
    assert row["unreadable"][0].startswith("seed.jsonl: record 'p7': image unreadable")
