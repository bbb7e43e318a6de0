"""Work a rerun of a finished pipeline does: it must be zero.

Runs distill -> evolve (2 small rounds) -> reflect -> final on the tiny model against scripted
OpenAI-protocol teacher and ORM servers (orm.policy: orm), then reruns every stage and counts what
the rerun did: API calls (the servers' counters), generations (rows added to the generation journals,
and the `GenStats.done` of every `Generator.generate` call), ORM verdicts (journal rows) and
`llamafactory-cli train` launches (the `$ llamafactory-cli train` lines the bridge appends to each
training log). The last line is their sum, `resume_repeated_work: N` (target 0).

    python benchmarks/bench_resume.py            # retraining each round (about 2 minutes on 2 CPU cores)
    python benchmarks/bench_resume.py --quick    # evolve without retraining
"""

from __future__ import annotations

import argparse
import contextlib
import io
import shutil
import sys
import time
from collections.abc import Iterator
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _setup import WORK, orm_reply, teacher_reply, write_config

from mathse import cli
from mathse.model.inference import Generator
from mathse.run.storage import iter_jsonl
from mathse.testing.openai_server import FakeOpenAIServer

STAGES = ("distill", "evolve", "reflect", "final")


class Counts:
    """What the pipeline has done so far, read from the servers and the run directory."""

    def __init__(self, out: Path, teacher: FakeOpenAIServer, orm: FakeOpenAIServer, generated: list[int]) -> None:
        self.out, self.teacher, self.orm, self.generated = out, teacher, orm, generated

    def snapshot(self) -> dict[str, int]:
        return {
            "teacher calls": self.teacher.chat_calls,
            "ORM calls": self.orm.chat_calls,
            "generation journal rows": sum(1 for p in self.out.glob("evolve/round_*/generations.*.jsonl")
                                           for _ in iter_jsonl(p)),
            "GenStats.done": sum(self.generated),
            "ORM verdict rows": sum(1 for p in self.out.glob("orm_reflections/*.jsonl")
                                    if not p.name.endswith(".failed.jsonl") for _ in iter_jsonl(p)),
            "training launches": sum(p.read_text(errors="replace").count("$ llamafactory-cli train")
                                     for p in self.out.rglob("*.log")),
        }


@contextlib.contextmanager
def count_generations() -> Iterator[list[int]]:
    """Record `GenStats.done` of every `Generator.generate` call made inside the block."""
    done: list[int] = []
    original = Generator.generate

    def generate(self: Generator, *args: object, **kwargs: object):  # type: ignore[no-untyped-def]
        stats = original(self, *args, **kwargs)
        done.append(stats.done)
        return stats

    Generator.generate = generate  # type: ignore[method-assign]
    try:
        yield done
    finally:
        Generator.generate = original  # type: ignore[method-assign]


def run_stage(stage: str, config: Path) -> float:
    """One stage in-process (its console output kept out of the report); returns its wall seconds."""
    start = time.perf_counter()
    sink = io.StringIO()
    with contextlib.redirect_stdout(sink), contextlib.redirect_stderr(sink):
        code = cli.main(["--stage", stage, "--config", str(config)])
    if code != 0:
        raise SystemExit(f"{stage} failed (exit {code}):\n{sink.getvalue()[-3000:]}")
    return time.perf_counter() - start


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true", help="evolve without retraining (about 1 minute)")
    args = parser.parse_args()

    root = WORK / "resume"
    shutil.rmtree(root, ignore_errors=True)
    with (
        FakeOpenAIServer(replies=teacher_reply, record_bodies=False) as teacher,
        FakeOpenAIServer(replies=orm_reply, record_bodies=False) as orm,
        count_generations() as generated,
    ):
        config = write_config(root, teacher.base_url, orm.base_url, evolve={"retrain": not args.quick})
        counts = Counts(root / "output", teacher, orm, generated)
        first: dict[str, float] = {stage: run_stage(stage, config) for stage in STAGES}
        done = counts.snapshot()
        again: dict[str, float] = {stage: run_stage(stage, config) for stage in STAGES}
        rerun = {name: value - done[name] for name, value in counts.snapshot().items()}

    print(f"pipeline: {' -> '.join(STAGES)}; evolve 2 rounds, retrain {'off' if args.quick else 'on'}; "
          "api teacher and ORM (policy orm)")
    for stage in STAGES:
        print(f"{stage:>8}: first run {first[stage]:6.1f} s, rerun {again[stage]:5.2f} s")
    print("first run did: " + ", ".join(f"{name} {value}" for name, value in done.items()))
    print("rerun did:     " + ", ".join(f"{name} {value}" for name, value in rerun.items()))
    if min(done.values()) <= 0:
        raise SystemExit("the first run did not exercise every kind of work; the benchmark is broken")
    work = rerun["teacher calls"] + rerun["ORM calls"] + rerun["generation journal rows"] + rerun["GenStats.done"]
    work += rerun["ORM verdict rows"] + rerun["training launches"]
    print(f"resume_rerun_api_calls: {rerun['teacher calls'] + rerun['ORM calls']}")
    print(f"resume_rerun_generations: {rerun['generation journal rows'] + rerun['GenStats.done']}")
    print(f"resume_repeated_work: {work}")


if __name__ == "__main__":
    main()
