"""Multi-node runs: node_rank 0 pays (API calls, generation, data writing); the others follow.

With `llama_factory.launcher.nnodes > 1` the README has every node run the same command on a
shared `run.output_dir`. Only node 0 calls the teacher and the ORM, generates and writes datasets
and markers; every other node waits for node 0's markers and joins each training through
LLaMA-Factory's torchrun launcher (the training is collective: it cannot finish without them).
"""

from __future__ import annotations

import time
from pathlib import Path

from mathse.run.config import MathSEConfig
from mathse.run.errors import StageError
from mathse.run.storage import is_done

POLL_S = 2.0


def node_rank(cfg: MathSEConfig) -> int:
    launch = cfg.llama_factory.launcher
    return launch.node_rank if launch.nnodes > 1 else 0


def is_follower(cfg: MathSEConfig) -> bool:
    """This node only joins trainings; node 0 does everything else."""
    return node_rank(cfg) != 0


def wait_for(cfg: MathSEConfig, folder: Path, what: str, marker: Path | None = None) -> None:
    """Block until node 0 marks `folder` done (or `marker` exists); StageError after the timeout."""
    timeout = cfg.llama_factory.launcher.wait_timeout_s
    deadline = time.monotonic() + timeout
    done = (lambda: marker.is_file()) if marker is not None else (lambda: is_done(folder))
    announced = False
    while not done():
        if time.monotonic() > deadline:
            raise StageError(
                f"node_rank {node_rank(cfg)}: waited {timeout:.0f}s for node 0's {what} ({marker or folder}); "
                f"run the same command on node 0 with the same run.output_dir on a shared filesystem "
                f"(llama_factory.launcher.wait_timeout_s sets the wait)"
            )
        if not announced:
            print(f"node_rank {node_rank(cfg)}: waiting for node 0's {what} ({marker or folder})", flush=True)
            announced = True
        time.sleep(POLL_S)
