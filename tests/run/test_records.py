"""Problem records: validation with file:line errors, image resolution, duplicates."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from pydantic import ValidationError

from mathse.run.records import (
    DataError,
    JudgedPathRow,
    PathRow,
    ProblemIndex,
    SftRow,
    VerdictRow,
    iter_problems,
    read_problems,
    write_problems,
)


def write_lines(path: Path, lines: list[str]) -> Path:
    path.write_text("".join(line + "\n" for line in lines), encoding="utf-8")
    return path


@pytest.fixture
def image(tmp_path: Path) -> Path:
    img = tmp_path / "img" / "a.png"
    img.parent.mkdir()
    img.write_bytes(b"\x89PNG")
    return img


def test_reads_and_resolves_images(tmp_path: Path, image: Path) -> None:
    path = write_lines(
        tmp_path / "p.jsonl",
        [
            json.dumps({"id": 1, "question": "q1", "images": ["img/a.png"], "answer": 7}),
            "",
            json.dumps({"id": "b", "question": "q2", "images": "img/a.png", "answer": "x", "extra": 1}),
        ],
    )
    problems = read_problems(path)
    assert [p.id for p in problems] == ["1", "b"]
    assert problems[0].answer == "7"
    assert problems[0].images == (str(image.resolve()),)
    assert problems[1].images == (str(image.resolve()),)


@pytest.mark.parametrize(
    ("line", "expected"),
    [
        ('{"id": "1", "question": "q", "answer": "1"', "p.jsonl:2: invalid JSON"),
        ("[1, 2]", "p.jsonl:2: expected a JSON object, got list"),
        ('{"id": "1", "answer": "1"}', "p.jsonl:2: question: Field required"),
        ('{"id": "1", "question": "", "answer": "1"}', "p.jsonl:2: question:"),
        ('{"id": "a", "question": "q", "answer": "1"}', "p.jsonl:2: duplicate id 'a' (first on line 1)"),
    ],
)
def test_bad_line_names_file_and_line(tmp_path: Path, line: str, expected: str) -> None:
    path = write_lines(tmp_path / "p.jsonl", ['{"id": "a", "question": "q", "answer": "1"}', line])
    with pytest.raises(DataError) as err:
        read_problems(path)
    assert str(err.value).startswith(str(tmp_path / expected.split(":")[0])) and expected in str(err.value)
    assert "\n" not in str(err.value)


def test_missing_image_names_record(tmp_path: Path) -> None:
    path = write_lines(tmp_path / "p.jsonl", ['{"id": "z9", "question": "q", "answer": "1", "images": ["no.png"]}'])
    with pytest.raises(DataError, match=r"p.jsonl:1: record 'z9': image not found: .*no.png"):
        read_problems(path)


def test_empty_and_missing_files(tmp_path: Path) -> None:
    with pytest.raises(DataError, match="no problems"):
        read_problems(write_lines(tmp_path / "e.jsonl", []))
    with pytest.raises(DataError, match="file not found"):
        read_problems(tmp_path / "absent.jsonl")
    (tmp_path / "bin.jsonl").write_bytes(b"\xff\xfe\x00garbage")
    with pytest.raises(DataError, match="not UTF-8"):
        read_problems(tmp_path / "bin.jsonl")


def test_problem_index_reads_problems_back_by_id(tmp_path: Path, image: Path) -> None:
    # The pool as evolve holds it: validated on open, then each problem read from the file by id,
    # equal to what read_problems gives (non-ASCII text and resolved images included).
    path = write_lines(tmp_path / "p.jsonl", [
        json.dumps({"id": "a", "question": "√2 ≈ ?", "answer": "1.41", "images": ["img/a.png"]}, ensure_ascii=False),
        "",
        json.dumps({"id": 2, "question": "q", "answer": 3}),
    ])
    index = ProblemIndex(path)
    assert list(index) == ["a", "2"] and len(index) == 2 and "zz" not in index
    assert [index[pid] for pid in index] == list(iter_problems(path)) == read_problems(path)
    assert index["a"].images == (str(image.resolve()),)
    bad = write_lines(tmp_path / "bad.jsonl", [json.dumps({"id": "a", "question": "q", "answer": "1"}), "{oops"])
    with pytest.raises(DataError, match=r"bad.jsonl:2: invalid JSON"):
        ProblemIndex(bad)  # every record is validated on open, before any is used


def test_write_roundtrip(tmp_path: Path, image: Path) -> None:
    path = write_lines(tmp_path / "p.jsonl", ['{"id": "1", "question": "q", "answer": "1", "images": ["img/a.png"]}'])
    problems = read_problems(path)
    assert write_problems(tmp_path / "out.jsonl", problems) == 1
    assert read_problems(tmp_path / "out.jsonl") == problems


def test_rows_between_stages_keep_their_json() -> None:
    """Typed rows dump to the JSON the stages always wrote: same keys, same order, absent stays absent."""
    judged = {"id": "p1", "question": "Q?", "images": ["a.png"], "answer": "5", "round": 2, "sample": 1,
              "prompt": "Q?\n\nSolve.", "reasoning": "Step 1: 4.", "error_step": 1, "analysis": "off by one",
              "verdict_source": "orm", "orm_raw": None}
    verdict = {"key": "p1#1", "id": "p1", "path": "Step 1: 4.", "steps": ["Step 1: 4."], "orm": None,
               "rule": {"correct": False},
               "final": {"correct": False, "error_step": 1, "analysis": "", "source": "rule"}}
    for model, row in ((JudgedPathRow, judged), (VerdictRow, verdict), (VerdictRow, {**verdict, "error": "HTTP 500"})):
        dumped = model.model_validate(row).to_json()
        assert list(dumped.items()) == list(row.items())
    path = {k: v for k, v in judged.items() if k in PathRow.model_fields}
    assert list(PathRow.model_validate(path).to_json()) == list(path)


def test_a_renamed_field_fails_at_once() -> None:
    row = {"id": "s1", "prompt": "Q", "images": [], "answer": "1", "response": "Step 1", "origin": "seed"}
    assert SftRow.model_validate(row).to_json() == row
    renamed = {("output" if k == "response" else k): v for k, v in row.items()}
    with pytest.raises(ValidationError, match="response"):
        SftRow.model_validate(renamed)
