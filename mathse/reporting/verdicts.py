"""The report's ``orm_vs_rule`` section: how often the ORM and the rule-based check disagree, from the
verdict journals (``orm_reflections/*.jsonl``), per stage (a round's shards together) and in total."""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

from mathse.reporting.run_files import RunFiles, rate
from mathse.run import layout

_SHARD_SUFFIX = re.compile(r"\.shard-\d+-of-\d+$")
_COUNTS = ("rows", "orm", "rule", "both", "agree", "disagree", "orm_yes_rule_no", "orm_no_rule_yes",
           "orm_unparseable")


def orm_vs_rule(files: RunFiles) -> dict[str, Any] | None:
    """Counts per journal (``rate`` = disagree / both) and their total; None without verdict journals."""
    groups: dict[str, dict[str, int]] = {}
    for path in sorted(layout.journals_dir(files.cfg).glob("*.jsonl")):
        if path.name.endswith(".failed.jsonl"):
            continue  # failed calls, not verdicts
        name = _SHARD_SUFFIX.sub("", path.stem)  # the shards of one round are one stage
        counts = _journal_counts(files, path)
        if counts["rows"]:
            group = groups.setdefault(name, dict.fromkeys(counts, 0))
            for key, value in counts.items():
                group[key] += value
    if not groups:
        files.missing.append("ORM vs rule: no verdict journals (orm_reflections/*.jsonl)")
        return None
    journals = {name: {**g, "rate": rate(g["disagree"], g["both"])} for name, g in groups.items()}
    total = {key: sum(g[key] for g in groups.values()) for key in next(iter(groups.values()))}
    total["rate"] = rate(total["disagree"], total["both"])
    if not total["both"]:
        files.missing.append("ORM vs rule: no verdict holds both an ORM and a rule verdict (orm.policy 'rule' "
                             "never asks the ORM)")
    return {"journals": journals, "total": total}


def _journal_counts(files: RunFiles, path: Path) -> dict[str, int]:
    """One journal's counts (rows that hold no verdict are skipped)."""
    counts = dict.fromkeys(_COUNTS, 0)
    for row in files.rows(path):
        if not any(k in row for k in ("final", "orm", "rule")):
            continue  # not a verdict row
        counts["rows"] += 1
        orm, rule = row.get("orm"), row.get("rule")
        if isinstance(orm, dict) and not orm.get("parsed", True):
            counts["orm_unparseable"] += 1
        # As JudgeStats.disagree counts it: a parsed ORM verdict against a rule verdict.
        orm_vote = orm.get("correct") if isinstance(orm, dict) and orm.get("parsed", True) else None
        rule_vote = rule.get("correct") if isinstance(rule, dict) else None
        orm_ok, rule_ok = isinstance(orm_vote, bool), isinstance(rule_vote, bool)
        counts["orm"] += orm_ok
        counts["rule"] += rule_ok
        if orm_ok and rule_ok:
            counts["both"] += 1
            if orm_vote == rule_vote:
                counts["agree"] += 1
            else:
                counts["disagree"] += 1
                counts["orm_yes_rule_no" if orm_vote else "orm_no_rule_yes"] += 1
    return counts
