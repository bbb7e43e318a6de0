"""The report's ``usage`` section: paid API calls, tokens and cost from the ledger (``usage.json``), per
stage and model and per role (teacher / ORM / judge / other)."""

from __future__ import annotations

from typing import Any

from mathse.reporting.run_files import RunFiles
from mathse.run import layout
from mathse.run.config import MathSEConfig
from mathse.run.usage import COUNTERS

_STAGE_ROLES = {"distill": "teacher", "evolve": "orm", "orm": "orm", "eval": "judge"}


def usage_role(cfg: MathSEConfig, stage: str, model: str, seen: dict[str, str] | None = None) -> str:
    """teacher / orm / judge / other: by the configured model names, the stage breaking ties.

    `seen` maps model -> role as learnt from single-purpose stages of the same ledger, so a mixed
    stage (reflect asks both teacher and ORM) is attributed even when the config no longer names them.
    """
    named = {
        "teacher": cfg.teacher.model if cfg.teacher else None,
        "orm": cfg.orm.api.model if cfg.orm.api else None,
        "judge": cfg.eval.judge.model if cfg.eval.judge else None,
    }
    roles = [role for role, name in named.items() if name == model]
    if len(roles) == 1:
        return roles[0]
    stage_role = _stage_role(stage)
    if stage_role and (not roles or stage_role in roles):
        return stage_role
    if roles:
        return roles[0]
    return (seen or {}).get(model, "other")


def api_usage(files: RunFiles) -> dict[str, Any] | None:
    """``{total_cost_usd, rows: one per stage and model, roles: totals per role}``; None without a ledger."""
    path = layout.usage_path(files.cfg)
    data = files.json(path)
    if data is None:
        if not path.is_file():
            files.missing.append("usage: no API usage ledger (usage.json): no paid API calls so far")
        return None
    stages = data.get("stages") if isinstance(data, dict) else None
    if not isinstance(stages, dict):
        files.warnings.append("usage.json: no 'stages' mapping (not a UsageLedger file?)")
        return None
    seen = {model: role for stage, models in stages.items() if (role := _stage_role(stage))
            for model in (models or {})}
    rows: list[dict[str, Any]] = []
    for stage, models in stages.items():
        for model, entry in (models or {}).items():
            if not isinstance(entry, dict):
                continue
            row: dict[str, Any] = {"stage": stage, "model": model, "role": usage_role(files.cfg, stage, model, seen)}
            for key in COUNTERS:
                row[key] = int(entry.get(key, 0) or 0)
            row["cost_usd"] = round(float(entry.get("cost_usd", 0.0) or 0.0), 6)
            rows.append(row)
    roles: dict[str, dict[str, Any]] = {}
    for row in rows:
        total = roles.setdefault(row["role"], {**dict.fromkeys(COUNTERS, 0), "cost_usd": 0.0})
        for key in (*COUNTERS, "cost_usd"):
            total[key] += row[key]
    for total in roles.values():
        total["cost_usd"] = round(total["cost_usd"], 6)
    return {"total_cost_usd": round(sum(r["cost_usd"] for r in rows), 6), "rows": rows, "roles": roles}


def _stage_role(stage: str) -> str | None:
    """The role a single-purpose stage asks (evolve only ever asks the ORM); None for mixed stages."""
    return _STAGE_ROLES.get(stage.split(".")[0].split("_")[0])
