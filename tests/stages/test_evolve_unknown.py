"""Unknown is not wrong: an evolve path whose verdict decided nothing is kept out of the rejected
paths, the hard buffer and so reflection, is counted in the round's stats, and its problem stays in
D_remain. The journal row is asked again by the next judge call over it (see test_orm)."""

from __future__ import annotations

from mathse.run import layout, rounds
from mathse.run.config_loading import load_config
from mathse.run.records import read_problems
from mathse.run.storage import Journal, atomic_write_json, iter_jsonl, read_json
from mathse.stages import evolve


def verdict(key: str, pid: str, correct: bool | None, parsed: bool = True) -> dict:
    orm = {"raw": "x", "correct": correct if parsed else None, "error_step": None if correct else 1,
           "analysis": "", "score": None, "parsed": parsed}
    return {"key": key, "id": pid, "path": "p", "steps": ["p"], "orm": orm, "rule": None,
            "final": {"correct": correct, "error_step": None if correct is not False else 1, "analysis": "",
                      "source": "orm"}}


def test_unknown_verdicts_stay_out_of_rejected_and_hard(run_config, demo_data) -> None:
    cfg = load_config(run_config(inference={"n_paths": 2}))
    pool = read_problems(demo_data[1])[:3]
    a, b, c = (p.id for p in pool)
    shard = rounds.WHOLE
    with Journal(rounds.generations_path(cfg, 1, shard)) as gens:
        for p in pool:
            for k in range(2):
                gens.append({"key": f"{p.id}#{k}", "id": p.id, "sample": k, "response": f"Step 1: {p.id} {k}."})
    rows = [
        verdict(f"{a}#0", a, None, parsed=False), verdict(f"{a}#1", a, None, parsed=False),  # all unknown
        verdict(f"{b}#0", b, None, parsed=False), verdict(f"{b}#1", b, False),  # one unknown, one wrong
        verdict(f"{c}#0", c, True), verdict(f"{c}#1", c, False),  # solved
    ]
    with Journal(evolve.journal_path(cfg, rounds.verdicts_stage(1, shard))) as journal:
        for row in rows:
            journal.append(row)
    atomic_write_json(rounds.shard_marker(cfg, 1, shard), {"gen_seconds": 1.0})

    by_id = {p.id: p for p in pool}
    stats = evolve.merge_shards(cfg, 1, [a, b, c], by_id, [a, b, c], 1)
    rd = layout.round_dir(cfg, 1)
    rejected = list(iter_jsonl(rd / "rejected.jsonl"))
    hard = list(iter_jsonl(rd / "hard.jsonl"))
    assert [r["id"] for r in rejected] == [b, c] and all(r["sample"] == 1 for r in rejected)
    assert [h["id"] for h in hard] == [b] and len(hard[0]["paths"]) == 1
    assert (stats["unknown"], stats["unparseable"], stats["rejected"], stats["accepted"]) == (3, 3, 2, 1)
    assert read_json(rd / "remain.json") == [a, b]  # unknown problems are tried again in later rounds
    assert "unknown 3 (not rejected)" in evolve.round_summary(1, {**stats, "paths_per_s": 0.0})
