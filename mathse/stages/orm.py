"""`--stage orm`: train the outcome reward model (ORM) on labelled reasoning paths.

Input: `orm.train_file`, JSONL, one labelled path a line::

    {"id": "p1", "question": "...", "images": ["img/p1.png"], "answer": "12" (optional),
     "path": "Step 1: ...\\nStep 2: ...", "correct": false, "error_step": 2, "analysis": "..."}

Every line is validated before anything is written (errors name `file:line`). Each row becomes
one SFT example in exactly the ORM contract of `mathse.verdict`: system `ORM_SYSTEM_PROMPT`, user
`build_orm_prompt(question, split_steps(path), answer)` after one `<image>` per image, assistant
`format_orm_response(verdict)`. That is what `mathse.judge.PathJudge` shows the trained ORM, and what
`parse_verdict` reads back.

Two units of work with completion markers: the dataset (`output/orm/`, dataset `mathse_orm` in
`output/data/`) and the model (`paths.orm_model`). A finished stage does nothing when rerun.
"""

from __future__ import annotations

import hashlib
from pathlib import Path

from pydantic import Field, StrictBool

from mathse import layout
from mathse.config import MathSEConfig, save_resolved_config
from mathse.llamafactory_bridge import SftExample, TrainJob, compose_train_job, run_train_job, write_sharegpt_dataset
from mathse.records import ImageRecord, read_records
from mathse.steps import split_steps
from mathse.storage import is_done, mark_done, read_marker
from mathse.token_budget import TokenBudget
from mathse.verdict import ORM_SYSTEM_PROMPT, Verdict, build_orm_prompt, format_orm_response

STAGE = layout.ORM
DATASET_NAME = "mathse_orm"
# Below this share of either class the ORM mostly learns to say one thing: worth a warning.
IMBALANCE_WARN = 0.1


class LabelledPath(ImageRecord):
    """One labelled reasoning path: the ORM's training example."""

    question: str = Field(min_length=1)
    answer: str | None = None
    path: str = Field(min_length=1)
    correct: StrictBool  # "false" or 0 would silently flip labels: only JSON booleans
    error_step: int | None = Field(default=None, ge=1)
    analysis: str

    @property
    def steps(self) -> list[str]:
        return split_steps(self.path)

    def verdict(self) -> Verdict:
        return Verdict(correct=self.correct, error_step=self.error_step, analysis=self.analysis, parsed=True)

    def example(self) -> SftExample:
        """The SFT example in the ORM prompt/response contract (see mathse.verdict)."""
        return SftExample(
            prompt=build_orm_prompt(self.question, self.steps, self.answer),
            response=format_orm_response(self.verdict()),
            images=self.images,
            system=ORM_SYSTEM_PROMPT,
            id=self.id,
        )


def read_labelled_paths(path: Path, image_root: Path | None = None) -> list[LabelledPath]:
    """Read and validate every line of the ORM train file; DataError names `file:line` on the first bad one.

    Several labelled paths may share a problem id. Image paths are made absolute: relative ones
    resolve against `image_root`, else the file's folder.
    """
    return read_records(
        path, LabelledPath, image_root, unique_ids=False, check=_label_problem, what="labelled paths"
    )


def _label_problem(row: LabelledPath) -> str | None:
    """Why a row's label is inconsistent with its path, or None."""
    if row.correct and row.error_step is not None:
        return f"error_step: must be null when correct is true (got {row.error_step})"
    n_steps = len(row.steps)
    if row.error_step is not None and row.error_step > n_steps:
        return f"error_step: {row.error_step} is beyond the path's {n_steps} steps"
    return None


def run(cfg: MathSEConfig, dry_run: bool = False) -> int:
    train_file: Path = cfg.require("orm.train_file")
    rows = read_labelled_paths(train_file, cfg.data.image_root)  # validates everything before any write
    stage_dir = layout.stage_dir(cfg, STAGE)
    job = train_job(cfg)
    if dry_run:
        print_plan(cfg, rows, job)
        return 0
    if finished(cfg):
        stats = read_marker(stage_dir)
        print(f"orm: already done, nothing to do ({stats['rows']} labelled paths; ORM at {job.output_dir})")
        if stats.get("train_file_sha256") != _sha256(train_file):
            print(f"orm: note: {train_file} changed since; delete {stage_dir} and {job.output_dir} to retrain")
        return 0

    save_resolved_config(cfg, stage_dir / "config.yaml")
    if not is_done(stage_dir):
        mark_done(stage_dir, build_dataset(cfg, rows, train_file))
    stats = read_marker(stage_dir)
    run_train_job(job)
    print(summary(stats))
    print(f"orm: ORM checkpoint: {job.output_dir}")
    return 0


def finished(cfg: MathSEConfig) -> bool:
    """Both units of work (the ORM dataset and the ORM model) carry their completion markers."""
    return is_done(layout.stage_dir(cfg, STAGE)) and is_done(cfg.model_path("orm_model"))


def artifacts(cfg: MathSEConfig) -> dict[str, Path]:
    stage_dir = layout.stage_dir(cfg, STAGE)
    return {
        "ORM dataset (LLaMA-Factory)": cfg.dataset_dir / f"{DATASET_NAME}.json",
        "ORM training log": stage_dir / "train_orm.log",
        "ORM checkpoint": cfg.model_path("orm_model"),
    }



def train_job(cfg: MathSEConfig) -> TrainJob:
    return compose_train_job(
        cfg,
        name="train_orm",
        training="orm",
        datasets=[DATASET_NAME],
        output_dir=cfg.model_path("orm_model"),
        run_dir=layout.stage_dir(cfg, STAGE),
    )


def balance(rows: list[LabelledPath]) -> dict[str, int]:
    correct = sum(1 for r in rows if r.correct)
    located = sum(1 for r in rows if not r.correct and r.error_step is not None)
    return {"rows": len(rows), "correct": correct, "incorrect": len(rows) - correct, "error_step_known": located}


def summary(stats: dict[str, int]) -> str:
    rows = max(stats["rows"], 1)
    return (
        f"orm: done: {stats['rows']} labelled paths ({stats['correct']} correct / {stats['incorrect']} incorrect, "
        f"{100 * stats['correct'] / rows:.0f}% correct; {stats['error_step_known']} with a first wrong step) "
        f"-> dataset {DATASET_NAME} ({stats['examples']} examples)"
    )


def print_plan(cfg: MathSEConfig, rows: list[LabelledPath], job: TrainJob) -> None:
    counts = balance(rows)
    print(f"[dry-run] orm: {counts['rows']} labelled paths from {cfg.orm.train_file}")
    print(
        f"[dry-run] {counts['correct']} correct / {counts['incorrect']} incorrect "
        f"({counts['error_step_known']} with a first wrong step)"
    )
    print(f"[dry-run] dataset {DATASET_NAME} ({counts['rows']} examples) in {cfg.dataset_dir}")
    print("[dry-run] training command (not run):")
    print(job.describe())


def build_dataset(cfg: MathSEConfig, rows: list[LabelledPath], train_file: Path) -> dict[str, int | str]:
    """Write the ORM's SFT dataset; returns the stats kept in the stage marker."""
    counts = balance(rows)
    for label in ("correct", "incorrect"):
        if counts[label] < IMBALANCE_WARN * counts["rows"]:
            print(f"orm: warning: only {counts[label]} of {counts['rows']} labelled paths are {label}")
    budget = TokenBudget.for_training(cfg, "orm")
    examples = write_sharegpt_dataset((r.example() for r in rows), cfg.dataset_dir, DATASET_NAME, budget)
    return {**counts, "examples": examples, "train_file_sha256": _sha256(train_file)}


def _sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def follow(cfg: MathSEConfig) -> int:
    """node_rank > 0 of a multi-node run: wait for node 0's ORM dataset, then join the ORM's training."""
    from mathse.nodes import wait_for

    wait_for(cfg, layout.stage_dir(cfg, STAGE), "ORM dataset")
    run_train_job(train_job(cfg))
    print(f"orm: this node's share of the ORM's training is done ({cfg.model_path('orm_model')})")
    return 0
