"""Stage 3 training: the final SFT starts from the Stage-2 checkpoint, full or LoRA."""

from __future__ import annotations

import os
from pathlib import Path

import pytest
import yaml

from mathse.cli import main
from mathse.llamafactory_bridge import SftExample, write_sharegpt_dataset
from mathse.records import read_problems
from mathse.storage import is_done, mark_done


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
@pytest.mark.parametrize("recipe", [None, "configs/llama_factory/sft_lora.yaml"])
def test_final_sft_trains_full_or_lora(reflected: Path, run_config, recipe: str | None, capsys) -> None:
    lora = {"reflect": {"final_recipe": recipe}, "llama_factory": {"extra": {"lora_rank": 4}}} if recipe else {}
    config = run_config(**lora)
    assert main(["--stage", "final", "--config", str(config)]) == 0
    model = reflected / "reflection_model_final"
    assert is_done(model)
    weights = "adapter_model.safetensors" if recipe else "model.safetensors"
    assert (model / weights).is_file()
    assert f"final model: {model}" in capsys.readouterr().out
    assert main(["--stage", "final", "--config", str(config)]) == 0
    assert "already done" in capsys.readouterr().out
