"""The API usage ledger (``<output_dir>/usage.json``): calls, tokens and estimated cost per stage and model."""

from __future__ import annotations

import json
import logging
import os
import threading
from pathlib import Path
from typing import TYPE_CHECKING, Any

from mathse.run.storage import atomic_write_json

if TYPE_CHECKING:
    from mathse.api.messages import ChatResult
    from mathse.run.config import Price

__all__ = ["UsageLedger"]

log = logging.getLogger(__name__)

COUNTERS = ("calls", "answered", "cached", "failures", "prompt_tokens", "completion_tokens", "batch_answered")


class UsageLedger:
    """Per stage and model: HTTP calls, answered, cached hits, failures, tokens, estimated USD.

    `calls` counts HTTP calls including retries; `answered` / `cached` / `failures` count
    requests; `batch_answered` counts the answered ones billed at the Batch API price. Opening an
    existing ledger file continues its counts, so a resumed run adds to them.
    Several processes must not share one ledger file (the last save wins): give each its own.
    """

    def __init__(self, path: Path, prices: dict[str, Price] | None = None) -> None:
        self.path = Path(path)
        self.prices = dict(prices or {})
        self._lock = threading.Lock()
        self._stages: dict[str, dict[str, dict[str, float]]] = {}
        self._unpriced_warned: set[str] = set()
        if self.path.exists():
            self._load()

    def _load(self) -> None:
        try:
            data = json.loads(self.path.read_text(encoding="utf-8"))
            stages = data["stages"]
            for stage, models in stages.items():
                for model, row in models.items():
                    entry = self._entry(stage, model)
                    for name in (*COUNTERS, "cost_usd"):
                        entry[name] = type(entry[name])(row.get(name, 0))
        except (ValueError, KeyError, TypeError, AttributeError) as err:
            # Only bookkeeping is at stake: keep the unreadable file aside and start afresh.
            backup = self.path.with_name(self.path.name + ".corrupt")
            os.replace(self.path, backup)
            self._stages = {}
            log.warning("usage ledger %s unreadable (%s); moved to %s, starting from zero", self.path, err, backup)

    def _entry(self, stage: str, model: str) -> dict[str, float]:
        models = self._stages.setdefault(stage, {})
        if model not in models:
            models[model] = {**{name: 0 for name in COUNTERS}, "cost_usd": 0.0}
        return models[model]

    def price_for(self, model: str) -> Price | None:
        """The exact model's price, else the longest configured prefix (gpt-4o for gpt-4o-2024-08-06)."""
        if model in self.prices:
            return self.prices[model]
        matches = [name for name in self.prices if model.startswith(name)]
        return self.prices[max(matches, key=len)] if matches else None

    def record(self, stage: str, model: str, result: ChatResult) -> None:
        """Account for one finished request."""
        with self._lock:
            entry = self._entry(stage, model)
            entry["calls"] += result.attempts
            if result.cached:
                entry["cached"] += 1  # no tokens, no cost: nobody was billed
                return
            if not result.ok:
                entry["failures"] += 1
                return
            entry["answered"] += 1
            entry["batch_answered"] += result.batch
            entry["prompt_tokens"] += result.prompt_tokens
            entry["completion_tokens"] += result.completion_tokens
            price = self.price_for(model)
            if price is None:
                if model not in self._unpriced_warned and self.prices:
                    self._unpriced_warned.add(model)
                    log.warning("no price configured for model %r: its cost is counted as $0", model)
                return
            prompt_rate, completion_rate = price.rates(result.batch)
            entry["cost_usd"] += (result.prompt_tokens * prompt_rate + result.completion_tokens * completion_rate) / 1e6

    def stage(self, stage: str) -> dict[str, float]:
        """Totals of one stage over its models."""
        with self._lock:
            total: dict[str, float] = {**{name: 0 for name in COUNTERS}, "cost_usd": 0.0}
            for entry in self._stages.get(stage, {}).values():
                for name, value in entry.items():
                    total[name] += value
            return total

    def to_dict(self) -> dict[str, Any]:
        with self._lock:
            stages = {s: {m: dict(e) for m, e in models.items()} for s, models in self._stages.items()}
        total_cost = sum(e["cost_usd"] for models in stages.values() for e in models.values())
        return {"version": 1, "total_cost_usd": round(total_cost, 6), "stages": stages}

    def save(self) -> None:
        """Write the ledger atomically (temp file + rename)."""
        atomic_write_json(self.path, self.to_dict())

    def summary_line(self, stage: str) -> str:
        t = self.stage(stage)
        by_batch = f" ({t['batch_answered']:,} by Batch API)" if t["batch_answered"] else ""
        return (
            f"{stage}: {t['answered']:,} answered{by_batch}, {t['cached']:,} cached, {t['failures']:,} failed "
            f"({t['calls']:,} HTTP calls); {t['prompt_tokens']:,} prompt + {t['completion_tokens']:,} "
            f"completion tokens; ~${t['cost_usd']:,.4f}"
        )
