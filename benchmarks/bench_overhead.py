"""The pipeline's own share of a stage's wall time (target < 2%).

Runs distill, evolve (2 rounds, retraining) and reflect on the tiny model against scripted
servers with a fixed latency, and reads each stage's `timings.json`: wall time split into model
compute (generation, training, a local judge), API waits (teacher, served ORM) and the rest,
which is MathSE's own work (reading, validating, writing, bookkeeping). Prints each stage's
overhead share; the last line is the largest, `pipeline_overhead_share: X.XXX`.
"""

from __future__ import annotations

import contextlib
import io
import json
import shutil
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _setup import WORK, orm_reply, teacher_reply, write_config

from mathse.cli import main as mathse
from mathse.testing.openai_server import FakeOpenAIServer

STAGES = {"distill": "distill", "evolve": "evolve", "reflect": "reflect"}


def main() -> None:
    run_dir = WORK / "overhead"
    shutil.rmtree(run_dir, ignore_errors=True)
    import llamafactory.chat  # noqa: F401  # library import time is not the pipeline's overhead

    shares = {}
    with (
        FakeOpenAIServer(replies=teacher_reply, latency_s=0.2) as teacher,
        FakeOpenAIServer(replies=orm_reply, latency_s=0.2) as orm,
    ):
        config = write_config(run_dir, teacher.base_url, orm.base_url, evolve={"retrain": True})
        for stage, folder in STAGES.items():
            with contextlib.redirect_stdout(io.StringIO()):
                code = mathse(["--stage", stage, "--config", str(config)])
            if code != 0:
                raise SystemExit(f"stage {stage} failed with exit {code}")
            timing = json.loads((run_dir / "output" / folder / "timings.json").read_text())
            shares[stage] = timing["overhead_share"]
            print(
                f"{stage}: wall {timing['wall_s']:.2f} s = model {timing['model_s']:.2f} + api {timing['api_s']:.2f} "
                f"+ overhead {timing['overhead_s']:.3f} s ({100 * timing['overhead_share']:.2f}%)"
            )
    print(f"pipeline_overhead_share: {max(shares.values()):.3f}")


if __name__ == "__main__":
    main()
