"""Config loading: typed objects, overrides, env secrets, one-line errors with suggestions."""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml

from mathse.run.config import ConfigError, save_resolved_config
from mathse.run.config_loading import load_config, parse_overrides


def write_config(tmp_path: Path, body: dict) -> Path:
    (tmp_path / "model").mkdir(exist_ok=True)
    (tmp_path / "seed.jsonl").write_text('{"id": "1", "question": "q", "answer": "1"}\n')
    base = {"model": {"base": "./model"}, "data": {"seed_file": "seed.jsonl"}}
    for key, value in body.items():
        base.setdefault(key, {}).update(value) if isinstance(value, dict) else base.__setitem__(key, value)
    path = tmp_path / "config.yaml"
    path.write_text(yaml.safe_dump(base))
    return path


def test_loads_typed_and_resolves_paths_relative_to_config(tmp_path: Path) -> None:
    cfg = load_config(write_config(tmp_path, {"evolve": {"rounds": 2}}))
    assert cfg.evolve.rounds == 2
    assert cfg.data.seed_file == (tmp_path / "seed.jsonl").resolve()
    assert cfg.output_dir == (tmp_path / "output").resolve()
    assert cfg.model.base == str((tmp_path / "model").resolve())
    # the shipped recipe is found even though the config lives elsewhere
    assert cfg.llama_factory.recipe.name == "sft_full.yaml" and cfg.llama_factory.recipe.is_file()


def test_misspelled_key_names_it_and_suggests(tmp_path: Path) -> None:
    path = write_config(tmp_path, {})
    with pytest.raises(ConfigError) as err:
        load_config(path, ["llama_factory.learning_rat=1e-5"])
    assert err.value.lines == ["config error: llama_factory.learning_rat: unknown key (did you mean 'learning_rate'?)"]


def test_all_errors_are_collected(tmp_path: Path) -> None:
    path = write_config(tmp_path, {"evolve": {"rounds": "many", "retrian": True}, "inference": {"backend": "tgi"}})
    with pytest.raises(ConfigError) as err:
        load_config(path)
    text = "\n".join(err.value.lines)
    assert len(err.value.lines) == 3
    assert "evolve.rounds" in text and "evolve.retrian: unknown key (did you mean 'retrain'?)" in text
    assert "inference.backend" in text


def test_override_types_are_parsed_as_yaml(tmp_path: Path) -> None:
    cfg = load_config(write_config(tmp_path, {}), ["llama_factory.learning_rate=2e-5", "evolve.retrain=false"])
    assert cfg.llama_factory.learning_rate == pytest.approx(2e-5)
    assert cfg.evolve.retrain is False
    assert parse_overrides(["a.b.c=[1, 2]"]) == {"a": {"b": {"c": [1, 2]}}}
    with pytest.raises(ConfigError, match="expected key=value"):
        parse_overrides(["novalue"])


def test_missing_required_path_is_named(tmp_path: Path) -> None:
    with pytest.raises(ConfigError) as err:
        load_config(write_config(tmp_path, {}), ["data.pool_file=nope.jsonl"])
    assert err.value.lines[0].startswith("config error: data.pool_file: path not found:")


def test_missing_model_section_is_named(tmp_path: Path) -> None:
    path = tmp_path / "c.yaml"
    path.write_text("run: {seed: 1}\n")
    with pytest.raises(ConfigError) as err:
        load_config(path)
    assert err.value.lines == ["config error: model: required key is missing"]


def test_invalid_yaml_names_file_and_line(tmp_path: Path) -> None:
    path = tmp_path / "c.yaml"
    path.write_text("model:\n  base: x\n bad: [\n")
    with pytest.raises(ConfigError) as err:
        load_config(path)
    assert str(path) in err.value.lines[0] and "invalid YAML" in err.value.lines[0]


def test_secret_from_env_is_never_saved(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("MATHSE_TEST_KEY", "sk-secret-123")
    teacher = {"base_url": "http://127.0.0.1:1/v1", "model": "m", "api_key": "${MATHSE_TEST_KEY}"}
    cfg = load_config(write_config(tmp_path, {"teacher": teacher}))
    assert cfg.teacher is not None and cfg.teacher.api_key is not None
    assert cfg.teacher.api_key.get_secret_value() == "sk-secret-123"
    assert "sk-secret-123" not in repr(cfg)
    save_resolved_config(cfg, tmp_path / "saved.yaml")
    assert "sk-secret-123" not in (tmp_path / "saved.yaml").read_text()


def test_unset_env_without_default_is_an_error_and_default_works(tmp_path: Path, monkeypatch) -> None:
    monkeypatch.delenv("MATHSE_UNSET", raising=False)
    teacher = {"base_url": "http://x/v1", "model": "m", "api_key": "${MATHSE_UNSET}"}
    with pytest.raises(ConfigError) as err:
        load_config(write_config(tmp_path, {"teacher": teacher}))
    assert err.value.lines == ["config error: teacher.api_key: environment variable MATHSE_UNSET is not set"]
    teacher["api_key"] = "${MATHSE_UNSET:-}"
    cfg = load_config(write_config(tmp_path, {"teacher": teacher}))
    assert cfg.teacher is not None and cfg.teacher.api_key is None


def test_without_an_orm_block_the_trained_orm_judges(tmp_path: Path) -> None:
    """The paper's method is the default; rejection sampling (no ORM) is asked for explicitly."""
    from mathse.cli import pipeline

    cfg = load_config(write_config(tmp_path, {}))
    assert (cfg.orm.backend, cfg.orm.policy) == ("trained", "orm")
    assert pipeline(cfg) == ["check", "distill", "orm", "evolve", "reflect", "final", "report"]
    rule = load_config(write_config(tmp_path, {"orm": {"backend": "rule", "policy": "rule"}}))
    assert "orm" not in pipeline(rule)


def test_orm_backend_needs_its_settings(tmp_path: Path) -> None:
    with pytest.raises(ConfigError) as err:
        load_config(write_config(tmp_path, {"orm": {"backend": "api", "policy": "orm"}}))
    assert "orm.api" in err.value.lines[0]


def test_repo_config_yaml_is_valid() -> None:
    root = Path(__file__).resolve().parents[2]
    with pytest.raises(ConfigError) as err:
        load_config(root / "config.yaml")
    # The hub points at data the user supplies; only those paths may be missing.
    assert all("path not found" in line and ("data." in line) for line in err.value.lines), err.value.lines


def test_duplicate_key_is_an_error_naming_the_line(tmp_path: Path) -> None:
    path = tmp_path / "c.yaml"
    path.write_text("model:\n  base: x\nevolve:\n  rounds: 2\n  rounds: 3\n")
    with pytest.raises(ConfigError) as err:
        load_config(path)
    assert err.value.lines == [f"config error: {path}:5: invalid YAML (duplicate key 'rounds')"]


def test_teacher_batch_mode_is_typed_validated_and_resolved(tmp_path: Path) -> None:
    teacher = {"base_url": "http://127.0.0.1:1/v1", "model": "gpt-4o", "mode": "batch",
               "batch": {"output_file": "vllm/out.jsonl", "on_failure": "live"}}
    cfg = load_config(write_config(tmp_path, {"teacher": teacher}))
    assert cfg.teacher.mode == "batch" and cfg.teacher.batch.on_failure == "live"
    assert cfg.teacher.batch.output_file == (tmp_path / "vllm" / "out.jsonl").resolve()
    live = load_config(write_config(tmp_path, {"teacher": {**teacher, "mode": "live"}}))
    assert live.teacher.mode == "live" and live.teacher.batch.max_resubmits == 2
    path = write_config(tmp_path, {"teacher": {**teacher, "mode": "offline"}})
    with pytest.raises(ConfigError) as err:
        load_config(path, ["teacher.batch.poll_interval=5", "teacher.batch.max_requests_per_file=60000"])
    text = "\n".join(err.value.lines)
    assert len(err.value.lines) == 3 and "config error: teacher.mode: Input should be 'live' or 'batch'" in text
    assert "teacher.batch.poll_interval: unknown key (did you mean 'poll_interval_s'?)" in text
    assert "teacher.batch.max_requests_per_file: Input should be less than or equal to 50000" in text
