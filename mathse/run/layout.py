"""The run's layout: every path under ``run.output_dir`` that more than one module knows.

A stage writes its own outputs here and reads another stage's only through these functions, so a
renamed file is renamed once. The layout of one run::

    <output_dir>/
      usage.json                      API ledger of every stage (usage_path)
      data/  cache/api/               LLaMA-Factory datasets, answered API calls (cfg.dataset_dir / api_cache_dir)
      distill/d_sft.jsonl             D_SFT from the teacher (d_sft_path(cfg, DISTILL))
      evolve/d_sft.jsonl              D_SFT grown by evolve; sft_chosen / sft_rejected / history.jsonl
      evolve/round_<r>/               one round's generations, verdicts, stats
      orm_reflections/<stage>.jsonl   verdict journals; reflection_rows.jsonl (kept reflections)
      reflect/  final/  orm/          stage folders (config.yaml, logs, completion marker)
      orm/data/                       the ORM's labelled paths: train.jsonl, heldout.jsonl, stats.json
      orm_model/orm_metrics.json      the trained ORM's held-out metrics
      <stage or round>/servers/       logs of the model servers the pipeline started
      eval/<checkpoint>/<benchmark>/  predictions of one pair; eval/results.{md,csv,json}
      report/                         report.md, report.json, charts
      check/  cache/data_check/       the data check: pairs, summary, dropped ids; each file's sketches
      ablations/<variant>/            a variant's own run folder (seeded from this one); ablations/results.json
      sft_model_stage0/  sft_model_round_<r>/  sft_model_final/  reflection_model_final/  orm_model/
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import TYPE_CHECKING, Literal

from mathse.run.storage import MARKER_NAME, read_json

if TYPE_CHECKING:
    from mathse.run.config import MathSEConfig

DISTILL, EVOLVE, REFLECT, FINAL, ORM, EVAL, REPORT = "distill", "evolve", "reflect", "final", "orm", "eval", "report"
ABLATIONS = "ablations"

D_SFT = "d_sft.jsonl"
USAGE = "usage.json"
JOURNALS = "orm_reflections"
REFLECTION_ROWS = "reflection_rows.jsonl"
EVAL_RESULTS = "results"  # eval/results.{md,csv,json}
STATS = "stats.json"  # a stage's (or evolve round's) counts
MERGED = ".merged.json"  # an evolve round's merge marker (its stats, before retraining)
CHOSEN, HISTORY = "chosen.jsonl", "history.jsonl"  # an evolve round's accepted paths, per-problem verdicts
PREDICTIONS = "predictions.jsonl"  # one eval pair's scored responses


def stage_dir(cfg: MathSEConfig, stage: str) -> Path:
    """A stage's own folder: its config.yaml, logs, stats and completion marker."""
    return cfg.output_dir / stage


def usage_path(cfg: MathSEConfig) -> Path:
    """The run's one API usage ledger, shared by every stage that calls a paid API."""
    return cfg.output_dir / USAGE


def d_sft_path(cfg: MathSEConfig, stage: str) -> Path:
    """D_SFT as written by `stage` (DISTILL: the teacher's; EVOLVE: grown with accepted paths)."""
    return stage_dir(cfg, stage) / D_SFT


def latest_d_sft(cfg: MathSEConfig) -> Path | None:
    """D_SFT after evolve, or after distill when evolve accepted nothing yet."""
    for path in (d_sft_path(cfg, EVOLVE), d_sft_path(cfg, DISTILL)):
        if path.is_file():
            return path
    return None


# ---------------------------------------------------------------------------------------------
# evolve's outputs that reflect and report read


EvolveBuffer = Literal["sft_chosen", "sft_rejected", "hard_problems", "history"]


def evolve_file(cfg: MathSEConfig, name: EvolveBuffer) -> Path:
    """A run-wide evolve buffer: sft_chosen / sft_rejected / hard_problems / history (.jsonl)."""
    return stage_dir(cfg, EVOLVE) / f"{name}.jsonl"


def round_dir(cfg: MathSEConfig, r: int) -> Path:
    return stage_dir(cfg, EVOLVE) / f"round_{r}"


def round_model_dir(cfg: MathSEConfig, r: int) -> Path:
    """M_r, the student trained after evolve round r."""
    return cfg.output_dir / f"sft_model_round_{r}"


def round_model(cfg: MathSEConfig, r: int) -> Path:
    """The model a finished round r left: M_r, or the model before it when the round accepted no
    new path and did not retrain (its marker records which). Before the round ends: M_r's folder."""
    marker = round_dir(cfg, r) / MARKER_NAME
    recorded = read_json(marker).get("model") if marker.is_file() else None
    return Path(recorded) if recorded else round_model_dir(cfg, r)


def model_ref(model_dir: Path) -> tuple[str, str | None]:
    """(model_name_or_path, adapter_name_or_path) for a trained dir: LoRA dirs are adapters."""
    adapter_config = model_dir / "adapter_config.json"
    if adapter_config.is_file():
        return str(read_json(adapter_config)["base_model_name_or_path"]), str(model_dir)
    return str(model_dir), None


# ---------------------------------------------------------------------------------------------
# Verdict journals and reflections


def journals_dir(cfg: MathSEConfig) -> Path:
    return cfg.output_dir / JOURNALS


def journal_path(cfg: MathSEConfig, stage: str) -> Path:
    """Where a stage keeps its ORM verdicts: ``<output_dir>/orm_reflections/<stage>.jsonl``."""
    return journals_dir(cfg) / f"{stage}.jsonl"


def reflection_rows_path(cfg: MathSEConfig) -> Path:
    return journals_dir(cfg) / REFLECTION_ROWS


def reflection_dropped_path(cfg: MathSEConfig) -> Path:
    return journals_dir(cfg) / "reflection_dropped.jsonl"


def reflection_sft_path(cfg: MathSEConfig) -> Path:
    return cfg.output_dir / "reflection_sft.jsonl"


# ---------------------------------------------------------------------------------------------
# eval


def safe_name(name: str) -> str:
    """A checkpoint or benchmark name as a folder name."""
    return re.sub(r"[^A-Za-z0-9._-]+", "_", name).strip("._") or "unnamed"


def pair_dir(cfg: MathSEConfig, checkpoint: str, benchmark: str) -> Path:
    """Where eval keeps one checkpoint's predictions on one benchmark."""
    return stage_dir(cfg, EVAL) / safe_name(checkpoint) / safe_name(benchmark)


def eval_image_dir(cfg: MathSEConfig, benchmark: str) -> Path:
    return stage_dir(cfg, EVAL) / "images" / safe_name(benchmark)


def eval_results_path(cfg: MathSEConfig, suffix: str) -> Path:
    """eval/results.<suffix>: md (the table), csv (the same for spreadsheets), json (with breakdowns)."""
    return stage_dir(cfg, EVAL) / f"{EVAL_RESULTS}.{suffix}"


def eval_items_path(cfg: MathSEConfig) -> Path:
    """eval/items.csv: one row per item, benchmark and checkpoint (correct, samples correct), for one's own plots."""
    return stage_dir(cfg, EVAL) / "items.csv"


# ---------------------------------------------------------------------------------------------
# the ORM

ORM_METRICS = "orm_metrics.json"


def orm_data_dir(cfg: MathSEConfig) -> Path:
    """The ORM's labelled paths built from M0 (train.jsonl, heldout.jsonl, stats.json, journals)."""
    return stage_dir(cfg, ORM) / "data"


def orm_metrics_path(cfg: MathSEConfig) -> Path:
    """The trained ORM's held-out metrics, inside the model folder so they travel with it."""
    return cfg.model_path("orm_model") / ORM_METRICS


def servers_dir(folder: Path) -> Path:
    """Where the model servers started for a unit of work (a round, a stage) keep their logs."""
    return folder / "servers"


# ---------------------------------------------------------------------------------------------
# ablations


def ablation_dir(cfg: MathSEConfig, variant: str) -> Path:
    """A variant's own run folder (its run.output_dir): seeded from the run, then its stages run there."""
    return stage_dir(cfg, ABLATIONS) / safe_name(variant)


def ablation_results_path(cfg: MathSEConfig, suffix: str = "json") -> Path:
    """ablations/results.<suffix>: json (every number), md (the table)."""
    return stage_dir(cfg, ABLATIONS) / f"results.{suffix}"


# ---------------------------------------------------------------------------------------------
# report


# Files the report reads, relative to output_dir; report's `finished` compares their mtimes with report.md.
REPORT_INPUT_GLOBS = (
    f"{DISTILL}/{MARKER_NAME}",
    f"{DISTILL}/{D_SFT}",
    f"{EVOLVE}/round_*/{STATS}",
    f"{EVOLVE}/round_*/{MERGED}",
    f"{EVOLVE}/round_*/{MARKER_NAME}",
    f"{EVOLVE}/round_*/{HISTORY}",
    f"{EVOLVE}/round_*/{CHOSEN}",
    f"{EVOLVE}/{HISTORY}",
    f"{EVOLVE}/sft_{CHOSEN}",
    f"{JOURNALS}/*.jsonl",
    USAGE,
    f"{REFLECT}/{STATS}",
    f"{JOURNALS}/{REFLECTION_ROWS}",
    f"{EVAL}/{EVAL_RESULTS}.json",
    f"{EVAL}/*/*/{PREDICTIONS}",
    f"{ORM}/data/{STATS}",
    f"check/{MARKER_NAME}",
    f"{ABLATIONS}/results.json",
)


# ---------------------------------------------------------------------------------------------
# the data check (duplicates and benchmark contamination of seed / pool)

CHECK = "check"
CHECK_PAIRS, CHECK_SUMMARY = "pairs.jsonl", "summary.json"


def check_pairs_path(cfg: MathSEConfig) -> Path:
    """Every match the check found: problem, other problem or benchmark item, signal, distance."""
    return stage_dir(cfg, CHECK) / CHECK_PAIRS


def check_summary_path(cfg: MathSEConfig) -> Path:
    """The check's counts and examples (the report reads it)."""
    return stage_dir(cfg, CHECK) / CHECK_SUMMARY


def check_excluded_path(cfg: MathSEConfig, role: Literal["seed", "pool"]) -> Path:
    """Ids of `role`'s problems that distill / evolve skip (data_check.action: drop; empty otherwise)."""
    return stage_dir(cfg, CHECK) / f"excluded_{role}.txt"


def check_index_path(cfg: MathSEConfig, which: Literal["benchmarks", "own"]) -> Path:
    """The check's working index (SQLite) of the benchmarks or of the seed and pool problems seen so far:
    made anew by each check, removed when it ends."""
    return stage_dir(cfg, CHECK) / f"index_{which}.sqlite"


def check_sketch_dir(cfg: MathSEConfig) -> Path:
    """Each input file's sketches (text keys, MinHash, image hashes), by content: computed once per file."""
    return cfg.output_dir / "cache" / "data_check"
