"""The results tables' statistics: paired tests of consecutive checkpoints, the per-item CSV, sampled columns."""

from __future__ import annotations

import csv
import io
from pathlib import Path
from types import SimpleNamespace

from mathse.answers.eval_results import items_csv, paired_tests, read_outcomes, results_table
from mathse.run.storage import atomic_write_jsonl


def outcome(correct: bool) -> dict:
    return {"correct": correct, "samples": None, "samples_correct": None, "maj_correct": None}


def test_paired_tests_skip_checkpoints_not_evaluated_and_pair_only_shared_items() -> None:
    a = {str(i): outcome(i < 3) for i in range(10)}  # 3 right
    b = {str(i): outcome(i < 9) for i in range(12)}  # 9 right; items 10, 11 only here
    tests = paired_tests(["base", "stage0", "final"], ["bench"], {("base", "bench"): a, ("final", "bench"): b})
    assert list(tests) == [("final", "bench")]
    t = tests[("final", "bench")]
    assert (t["from"], t["items"], t["improved"], t["worsened"]) == ("base", 10, 6, 0)
    assert t["p_value"] == 2 / 64 and t["significant"]


def test_items_csv_from_predictions(tmp_path: Path) -> None:
    path = tmp_path / "predictions.jsonl"
    atomic_write_jsonl(path, [
        {"id": 7, "correct": True, "sampled": {"n": 4, "correct": 3, "maj": {"correct": True}}},
        {"id": "8", "correct": False},
    ])  # fmt: skip
    outcomes = {("final", "bench"): read_outcomes(path)}
    assert read_outcomes(tmp_path / "missing.jsonl") == {}
    rows = list(csv.DictReader(io.StringIO(items_csv([SimpleNamespace(name="final")], [SimpleNamespace(name="bench")],
                                                    outcomes))))
    assert [list(r.values()) for r in rows] == [["7", "bench", "final", "1", "4", "3", "1"],
                                               ["8", "bench", "final", "0", "", "", ""]]


def test_results_table_carries_intervals_and_sampled_columns() -> None:
    sampled = {"k": 4, "pass_at_k": 75.0, "pass_at_k_interval": [30.0, 95.0], "maj_at_k": 50.0,
               "maj_at_k_interval": [15.0, 85.0], "maj_ties": 1, "maj_no_answer": 0}
    pair = {"checkpoint": "base", "benchmark": "b", "total": 4, "correct": 2, "correct_with_judge": 2,
            "judge": None, "settings": {"model": "m"}, "sampled": sampled}
    row = results_table([pair])["table"]["base"]
    assert row["b interval"] == [15.0, 85.0] and row["b pass@k"] == 75.0 and row["b maj@k interval"] == [15.0, 85.0]
    assert (row["b k"], row["b maj ties"], row["b maj no answer"]) == (4, 1, 0)
