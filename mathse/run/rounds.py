"""The evolve rounds' bookkeeping: D_remain at each round, the round's batch, its shards (`--shard i/n`) and files."""

from __future__ import annotations

import random
import re
from dataclasses import dataclass
from pathlib import Path

from mathse.run import layout
from mathse.run.config import ConfigError, MathSEConfig
from mathse.run.records import ProblemIndex
from mathse.run.storage import (
    atomic_write_json,
    is_done,
    read_json,
)

_SHARD_MARKER = re.compile(r"^\.shard-(\d+)-of-(\d+)\.done$")


@dataclass(frozen=True)
class Shard:
    index: int
    count: int

    @property
    def tag(self) -> str:
        return f"shard-{self.index}-of-{self.count}"

    @classmethod
    def parse(cls, text: str) -> Shard:
        match = re.fullmatch(r"(\d+)/(\d+)", text.strip())
        if not match or not 0 <= int(match.group(1)) < int(match.group(2)):
            raise ConfigError([f"config error: --shard {text!r}: expected i/n with 0 <= i < n, e.g. 0/4"])
        return cls(int(match.group(1)), int(match.group(2)))


WHOLE = Shard(0, 1)


def generations_path(cfg: MathSEConfig, r: int, shard: Shard) -> Path:
    return layout.round_dir(cfg, r) / f"generations.{shard.tag}.jsonl"


def verdicts_stage(r: int, shard: Shard) -> str:
    return f"evolve_round_{r}.{shard.tag}"


def shard_marker(cfg: MathSEConfig, r: int, shard: Shard) -> Path:
    return layout.round_dir(cfg, r) / f".{shard.tag}.done"


def merged_marker(cfg: MathSEConfig, r: int) -> Path:
    return layout.round_dir(cfg, r) / layout.MERGED


def shard_counts(cfg: MathSEConfig, r: int) -> set[int]:
    rd = layout.round_dir(cfg, r)
    if not rd.is_dir():
        return set()
    return {int(m.group(2)) for p in rd.iterdir() if (m := _SHARD_MARKER.match(p.name))} | {
        int(m.group(1)) for p in rd.glob("generations.shard-*-of-*.jsonl") if (m := re.search(r"of-(\d+)", p.name))
    }


def sharded_elsewhere(cfg: MathSEConfig, r: int) -> bool:
    """A round that was started with --shard i/n (n > 1) is finished with shards and --merge."""
    return any(n > 1 for n in shard_counts(cfg, r))


def remaining_before(cfg: MathSEConfig, r: int, pool: ProblemIndex) -> list[str]:
    """D_remain at the start of round r: the pool, minus every problem solved in rounds < r."""
    if r == 1:
        return list(pool)
    return list(read_json(layout.round_dir(cfg, r - 1) / "remain.json"))


def pool_exhausted(cfg: MathSEConfig) -> bool:
    last = max((r for r in range(1, cfg.evolve.rounds + 1) if is_done(layout.round_dir(cfg, r))), default=0)
    return last > 0 and not read_json(layout.round_dir(cfg, last) / "remain.json")


def load_or_sample_batch(cfg: MathSEConfig, r: int, remain: list[str]) -> list[str]:
    """The round's problem ids: sampled once (seeded by run seed and round), then read back."""
    path = layout.round_dir(cfg, r) / "batch.json"
    if path.is_file():
        return list(read_json(path))
    rng = random.Random(f"{cfg.run.seed}:{r}")
    batch = rng.sample(remain, min(cfg.evolve.batch_size, len(remain)))
    atomic_write_json(path, batch)
    return batch
