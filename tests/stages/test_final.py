"""Stage 3 training: the final SFT starts from the Stage-2 checkpoint, full or LoRA."""

from __future__ import annotations

import os
from pathlib import Path

import pytest
import yaml

from mathse.cli import main
from mathse.model.training_data import write_sharegpt_dataset
from mathse.run.records import SftExample, read_problems
from mathse.run.storage import is_done, mark_done


@pytest.fixture
def reflected(tmp_path: Path, tiny_model: Path, demo_data) -> Path:
    """An output dir as reflect leaves it, with the tiny model standing in as the Stage-2 model."""
    out = tmp_path / "output"
    out.mkdir()
    stage2 = out / "sft_model_round_2"
    os.symlink(tiny_model, stage2)
    os.symlink(stage2.name, out / "sft_model_final")
    problems = read_problems(demo_data[0])
    examples = [SftExample(prompt=p.question, response=p.solution or p.answer, images=p.images) for p in problems]
    write_sharegpt_dataset(examples, out / "data", "mathse_reflection_sft")
    mark_done(out / "reflect", {"kept": 0})
    return out


def test_final_before_reflect_is_a_clear_error(run_config, tmp_path: Path, tiny_model, capsys) -> None:
    out = tmp_path / "output"
    out.mkdir()
    os.symlink(tiny_model, out / "sft_model_final")
    assert main(["--stage", "final", "--config", str(run_config())]) == 2
    assert "run --stage reflect first" in capsys.readouterr().err


def test_dry_run_starts_from_stage2(reflected: Path, run_config, tiny_model, capsys) -> None:
    assert main(["--stage", "final", "--config", str(run_config()), "--dry-run"]) == 0
    printed = capsys.readouterr().out
    args = yaml.safe_load(printed.rsplit("train_final.yaml\n", 1)[1])
    assert args["model_name_or_path"] == str(tiny_model.resolve())
    assert args["dataset"] == "mathse_reflection_sft" and args["finetuning_type"] == "full"
    assert args["output_dir"] == str(reflected / "reflection_model_final")
    assert not (reflected / "reflection_model_final").exists()


@pytest.mark.slow
def test_final_sft_trains_lora_with_its_own_hyperparameters(reflected: Path, run_config, capsys) -> None:
    # The full-finetune final is trained (killed and resumed) in tests/test_reliability.py; here the
    # LoRA final takes its own hyperparameters over the shared block (learning_rate 5e-3 there).
    recipe = "configs/llama_factory/sft_lora.yaml"
    config = run_config(trainings={"final": {"recipe": recipe, "learning_rate": 2.0e-4, "lora_rank": 4}})
    assert main(["--stage", "final", "--config", str(config)]) == 0
    model = reflected / "reflection_model_final"
    assert is_done(model)
    assert (model / "adapter_model.safetensors").is_file()
    trained = yaml.safe_load((reflected / "final" / "train_final.yaml").read_text())
    assert trained["finetuning_type"] == "lora" and trained["learning_rate"] == 2.0e-4
    assert trained["lora_rank"] == 4 and trained["cutoff_len"] == 256  # the last from the shared block
    assert "adapter_config.json" in os.listdir(model)
    assert f"final model: {model}" in capsys.readouterr().out
    assert main(["--stage", "final", "--config", str(config)]) == 0
    assert "already done" in capsys.readouterr().out


def test_dry_run_shows_each_training_value_and_its_origin(reflected: Path, run_config, capsys) -> None:
    final = {"recipe": "configs/llama_factory/sft_lora.yaml", "learning_rate": 2.0e-4, "extra": {"lora_dropout": 0.1}}
    config = run_config(trainings={"final": final, "m0": {"learning_rate": 3.0e-3}})
    assert main(["--stage", "final", "--config", str(config), "--dry-run"]) == 0
    printed = capsys.readouterr().out
    lines = printed.rsplit("train_final.yaml\n", 1)[1].splitlines()
    origin = {line.split(":", 1)[0]: line.rsplit("  # from ", 1)[1] for line in lines if "  # from " in line}
    assert origin["finetuning_type"] == "recipe sft_lora.yaml" and origin["lora_target"] == "recipe sft_lora.yaml"
    assert origin["learning_rate"] == "trainings.final" and origin["lora_dropout"] == "trainings.final"
    assert origin["cutoff_len"] == "llama_factory" and origin["max_steps"] == "llama_factory"
    assert origin["model_name_or_path"] == "stage" and origin["output_dir"] == "stage"
    args = yaml.safe_load(printed.rsplit("train_final.yaml\n", 1)[1])
    assert args["learning_rate"] == 2.0e-4 and args["finetuning_type"] == "lora" and args["lora_dropout"] == 0.1
    # A shared value overruling the LoRA recipe is said, not silent (the demo's accumulation of 1 over 8).
    assert "# note: gradient_accumulation_steps: 1 from llama_factory.gradient_accumulation_steps replaces 8 " \
           "of sft_lora.yaml (set trainings.final.gradient_accumulation_steps to choose)" in printed
    # The M0 override stays with M0.
    assert main(["--stage", "distill", "--config", str(config), "--dry-run"]) == 0
    m0 = capsys.readouterr().out
    assert "learning_rate: 0.003  # from trainings.m0" in m0 and "finetuning_type: full  # from recipe" in m0


def test_final_recipe_given_twice_is_a_config_error(run_config, capsys) -> None:
    recipe = "configs/llama_factory/sft_lora.yaml"
    config = run_config(reflect={"final_recipe": recipe}, trainings={"final": {"recipe": recipe}})
    assert main(["--stage", "final", "--config", str(config), "--dry-run"]) == 2
    assert "reflect.final_recipe: also set as trainings.final.recipe" in capsys.readouterr().err
