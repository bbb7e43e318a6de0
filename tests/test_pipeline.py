"""The paper's pipeline by default: `--stage all` trains and uses the ORM; the official README's keys load."""

from __future__ import annotations

import re
from pathlib import Path

import pytest
import yaml

from mathse.cli import main, pipeline
from mathse.run.config import ConfigError
from mathse.run.config_loading import load_config
from tests.conftest import PROJECT_ROOT


def shipped_config(tmp_path: Path, demo_data, **extra) -> Path:
    """config.yaml as shipped, its data pointed at the demo files."""
    cfg = yaml.safe_load((PROJECT_ROOT / "config.yaml").read_text())
    seed, pool = demo_data
    cfg["data"] = {"seed_file": str(seed), "pool_file": str(pool), "image_root": str(seed.parent)}
    cfg["run"]["output_dir"] = str(tmp_path / "out")
    cfg["llama_factory"]["recipe"] = str(PROJECT_ROOT / "configs" / "llama_factory" / "sft_full.yaml")
    cfg["llama_factory"]["deepspeed"] = str(PROJECT_ROOT / "configs" / "deepspeed" / "ds_z3_config.json")
    for section, values in extra.items():
        cfg.setdefault(section, {}).update(values)
    path = tmp_path / "config.yaml"
    path.write_text(yaml.safe_dump(cfg, sort_keys=False))
    return path


def test_shipped_config_runs_the_paper_pipeline_and_dry_run_lists_the_orm_stage(tmp_path, demo_data, capsys) -> None:
    config = shipped_config(tmp_path, demo_data)
    cfg = load_config(config)
    assert (cfg.orm.backend, cfg.orm.policy) == ("trained", "orm")
    assert pipeline(cfg) == ["check", "distill", "orm", "evolve", "reflect", "final", "report"]
    assert main(["--stage", "all", "--config", str(config), "--dry-run"]) == 0
    out = capsys.readouterr().out
    assert out.index("=== mathse: stage orm ===") < out.index("=== mathse: stage evolve ===")
    orm_part = out[out.index("=== mathse: stage orm ==="):out.index("=== mathse: stage evolve ===")]
    assert "[dry-run] orm data: 8 labelled problems (seed) x 4 paths = 32 paths from M0" in orm_part
    assert "teacher gpt-4o" in orm_part and "10% of the problems held out" in orm_part
    assert re.search(r"\$ .*llamafactory-cli train \S+/orm/train_orm\.yaml", orm_part)
    assert "judge: the trained ORM served by the pipeline: 1 vllm server(s) of " in out and "as 'mathse-orm'" in out
    # Every line that names an engine names the one the run uses (inference.backend served, vLLM): the
    # ORM's sampling from M0 too, which once printed the in-process huggingface ChatModel's arguments.
    assert "[dry-run] sampling: 1 vllm replica(s) on this node" in orm_part
    assert "[dry-run] round 1 generation: 1 vllm replica(s) on this node" in out
    assert "huggingface" not in out and "ChatModel(" not in out
    assert not (tmp_path / "out").exists()


def test_rule_backend_skips_the_orm_stage_and_says_no_orm_is_used(tmp_path, demo_data, capsys) -> None:
    config = shipped_config(tmp_path, demo_data, orm={"backend": "rule", "policy": "rule"})
    assert "orm" not in pipeline(load_config(config))
    assert main(["--stage", "evolve", "--config", str(config), "--dry-run"]) == 0
    lines = [line for line in capsys.readouterr().out.splitlines() if "no ORM is used" in line]
    assert len(lines) == 1 and "rejection sampling" in lines[0]


def test_served_generation_dry_run_names_the_replicas_and_their_command(tmp_path, demo_data, capsys) -> None:
    config = shipped_config(tmp_path, demo_data, inference={"backend": "served"})
    assert main(["--stage", "evolve", "--config", str(config), "--dry-run"]) == 0
    out = capsys.readouterr().out
    start = out.index("[dry-run] round 1 generation: 1 vllm replica(s) on this node")
    command = out[start:].splitlines()[1]
    assert command.startswith("$ ") and "vllm" in command and "sft_model_stage0" in command, command
    assert not (tmp_path / "out").exists()


def test_official_readme_keys_load_as_aliases(tmp_path, demo_data, monkeypatch) -> None:
    config = shipped_config(tmp_path, demo_data)
    raw = yaml.safe_load(config.read_text())
    raw["orm"]["endpoint"] = "http://127.0.0.1:8001/v1"
    raw["orm"]["api_key"] = "orm-secret"
    raw["gpt4o"] = {"api_key": "teacher-secret"}
    del raw["teacher"]["api_key"]
    config.write_text(yaml.safe_dump(raw))
    cfg = load_config(config)
    assert cfg.orm.api is not None and cfg.orm.api.base_url == "http://127.0.0.1:8001/v1"
    assert cfg.orm.api.api_key.get_secret_value() == "orm-secret" and cfg.orm.api.model == "mathse-orm"
    assert cfg.teacher is not None and cfg.teacher.api_key.get_secret_value() == "teacher-secret"
    assert "secret" not in yaml.safe_dump(cfg.to_safe_dict())

    # The alias and its key both set: one clear line naming the alias.
    raw["teacher"]["api_key"] = "other"
    config.write_text(yaml.safe_dump(raw))
    with pytest.raises(ConfigError) as err:
        load_config(config)
    assert err.value.lines == ["config error: gpt4o.api_key: alias of teacher.api_key, which is also set; keep one"]
