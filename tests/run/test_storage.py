"""Crash-safe storage: atomic writes, torn-line tolerant journals, markers."""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest

from mathse.run.storage import Journal, atomic_write_jsonl, is_done, iter_jsonl, mark_done, read_marker


def test_atomic_write_leaves_no_temp_and_replaces(tmp_path: Path) -> None:
    path = tmp_path / "a" / "x.jsonl"
    assert atomic_write_jsonl(path, [{"k": 1}, {"k": 2}]) == 2
    assert atomic_write_jsonl(path, ({"k": i} for i in range(3))) == 3
    assert [r["k"] for r in iter_jsonl(path)] == [0, 1, 2]
    assert sorted(p.name for p in path.parent.iterdir()) == ["x.jsonl"]


def test_failed_write_keeps_old_file(tmp_path: Path) -> None:
    path = tmp_path / "x.jsonl"
    atomic_write_jsonl(path, [{"k": 1}])

    def rows():
        yield {"k": 2}
        raise RuntimeError("killed")

    with pytest.raises(RuntimeError):
        atomic_write_jsonl(path, rows())
    assert list(iter_jsonl(path)) == [{"k": 1}]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["x.jsonl"]


def test_journal_drops_torn_tail_and_dedupes(tmp_path: Path) -> None:
    path = tmp_path / "j.jsonl"
    path.write_text(json.dumps({"key": "a", "v": 1}) + "\n" + '{"key": "b", "v"')  # killed mid-line
    with Journal(path) as journal:
        assert "a" in journal and "b" not in journal
        assert journal.append({"key": "a", "v": 99}) is False
        assert journal.append({"key": "b", "v": 2}) is True
    assert list(iter_jsonl(path)) == [{"key": "a", "v": 1}, {"key": "b", "v": 2}]
    with Journal(path) as journal:
        assert len(journal) == 2


def test_journal_reads_rows_back_from_disk(tmp_path: Path) -> None:
    # Only the keys stay in memory: rows (non-ASCII text included) come back from the file, the
    # latest row of a replaced key wins and keeps the key's first place, before and after a reopen.
    path = tmp_path / "j.jsonl"
    with Journal(path) as journal:
        journal.append({"key": "a", "text": "√2 ≈ 1.414"})
        journal.append({"key": "b", "text": "x"})
        journal.replace({"key": "a", "text": "asked again"})
        assert journal.get("a") == {"key": "a", "text": "asked again"} and journal["b"]["text"] == "x"
        assert journal.get("zz") is None and journal.get("zz", {}) == {}
        journal.append({"key": "c", "text": "é"})
        assert [k for k, _ in journal.items()] == ["a", "b", "c"]
    with Journal(path) as journal:
        assert [r["text"] for r in journal.values()] == ["asked again", "x", "é"]
        assert list(journal.keys()) == ["a", "b", "c"] and len(journal) == 3
        assert not hasattr(journal, "rows")


def test_markers(tmp_path: Path) -> None:
    assert not is_done(tmp_path)
    mark_done(tmp_path, {"n": 3})
    assert is_done(tmp_path) and read_marker(tmp_path) == {"n": 3}


def test_atomic_files_get_the_usual_mode_not_0600(tmp_path: Path) -> None:
    umask = os.umask(0)
    os.umask(umask)
    atomic_write_jsonl(tmp_path / "x.jsonl", [{"k": 1}])
    assert (tmp_path / "x.jsonl").stat().st_mode & 0o777 == 0o666 & ~umask


def test_damaged_line_mid_file_is_a_clear_error(tmp_path: Path) -> None:
    from mathse.run.storage import CorruptFileError

    path = tmp_path / "j.jsonl"
    path.write_text('{"key": "a"}\n{"key": \x00garbage\n{"key": "c"}\n')
    with pytest.raises(CorruptFileError, match=r"j.jsonl:2: damaged line"):
        Journal(path)
