"""Stage 3 training (final): SFT on D_SFT fused with the kept reflections.

Starts from the Stage-2 checkpoint (`paths.sft_model_final`, the latest evolve model) or, with
`reflect.final_from: base`, from the base model; full-parameter by default, LoRA/QLoRA with
`reflect.final_recipe: configs/llama_factory/sft_lora.yaml` (or sft_qlora.yaml). Writes
`paths.reflection_model_final`.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from mathse.model.training import TrainJob, compose_train_job, run_train_job, training_stale
from mathse.run import layout
from mathse.run.config import MathSEConfig, save_resolved_config
from mathse.run.errors import StageError
from mathse.run.fingerprint import Stale, settle
from mathse.run.storage import is_done

STAGE = layout.FINAL
DATASET_NAME = "mathse_reflection_sft"  # written by the reflect stage


def finished(cfg: MathSEConfig) -> bool:
    return is_done(cfg.model_path("reflection_model_final"))


def stale(cfg: MathSEConfig) -> list[Stale]:
    """The final model, trained on reflection data, a start model or arguments that changed since."""
    found = training_stale(train_job(cfg), "final model") if finished(cfg) else None
    return [found] if found is not None else []


def artifacts(cfg: MathSEConfig) -> dict[str, Path]:
    return {"final model": cfg.model_path("reflection_model_final")}


def start_model(cfg: MathSEConfig) -> tuple[str, str | None]:
    """(model_name_or_path, adapter) to start from; a LoRA Stage-2 checkpoint is an adapter."""
    if cfg.reflect.final_from == "base":
        return cfg.model.base, None
    stage2 = cfg.model_path("sft_model_final")
    if not stage2.exists():
        raise StageError(f"final: no Stage-2 checkpoint at {stage2}: run --stage evolve first")
    stage2 = stage2.resolve()
    adapter_config = stage2 / "adapter_config.json"
    if adapter_config.is_file():
        return json.loads(adapter_config.read_text())["base_model_name_or_path"], str(stage2)
    return str(stage2), None


def train_job(cfg: MathSEConfig) -> TrainJob:
    model, adapter = start_model(cfg)
    extra: dict[str, Any] = {"adapter_name_or_path": adapter} if adapter else {}
    if cfg.reflect.format == "reflection":
        # Reflection rows are question -> draft -> diagnosis -> reflection + corrected path: the
        # loss goes on the last turn only, so the wrong draft is never a training target.
        extra["mask_history"] = True
    return compose_train_job(
        cfg,
        name="train_final",
        training="final",
        model_path=model,
        datasets=[DATASET_NAME],
        dataset_dir=cfg.dataset_dir,
        output_dir=cfg.model_path("reflection_model_final"),
        run_dir=layout.stage_dir(cfg, STAGE),
        extra=extra,
        recipe_path=cfg.reflect.final_recipe,
    )


def run(cfg: MathSEConfig, dry_run: bool = False) -> int:
    dataset = cfg.dataset_dir / f"{DATASET_NAME}.json"
    if dry_run and cfg.reflect.final_from == "stage2" and not cfg.model_path("sft_model_final").exists():
        print(f"[dry-run] final: would train on {dataset} from the Stage-2 checkpoint (not there yet)")
        return 0
    if dry_run:
        target = cfg.model_path("reflection_model_final")
        print(f"[dry-run] final: SFT on {dataset} (from the reflect stage) into {target}")
        print(train_job(cfg).describe())
        return 0
    settle(cfg, STAGE, stale(cfg))
    if finished(cfg):
        print(f"final: already done, nothing to do (model at {cfg.model_path('reflection_model_final')})")
        return 0
    if not is_done(layout.stage_dir(cfg, layout.REFLECT)) or not dataset.is_file():
        raise StageError(f"final: the reflection dataset is not ready ({dataset}): run --stage reflect first")
    save_resolved_config(cfg, layout.stage_dir(cfg, STAGE) / "config.yaml")
    out = run_train_job(train_job(cfg))
    print(f"final: done; final model: {out}")
    return 0


def follow(cfg: MathSEConfig) -> int:
    """node_rank > 0 of a multi-node run: wait for node 0's reflection data, then join the final SFT."""
    from mathse.run.nodes import wait_for

    wait_for(cfg, layout.stage_dir(cfg, layout.REFLECT), "reflection dataset")
    run_train_job(train_job(cfg))
    print(f"final: this node's share of the final SFT is done ({cfg.model_path('reflection_model_final')})")
    return 0
