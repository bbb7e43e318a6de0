"""The backbone table (mathse/model/backbones.py) and the config checks it drives."""

from __future__ import annotations

import json
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path

import pytest
import yaml
from PIL import Image

from mathse.demo.tiny_backbones import TINY_FAMILIES, build_tiny
from mathse.model.backbones import BACKBONES, backbone_of, check_model, llamafactory_templates
from mathse.model.generation_items import make_items
from mathse.model.inference import Generator
from mathse.model.inputs import ModelInputs, model_inputs
from mathse.model.prompts import student_prompt
from mathse.model.token_budget import TokenBudget
from mathse.model.training import compose_train_job, run_train_job
from mathse.model.training_data import write_sharegpt_dataset
from mathse.run.config import ConfigError, InferenceConfig
from mathse.run.config_loading import load_config
from mathse.run.errors import DataError
from mathse.run.records import SftExample, read_problems
from mathse.run.storage import Journal
from tests.conftest import PROJECT_ROOT, write_run_config


def with_model(config: Path, **values: str) -> Path:
    """`config` with its `model` section updated."""
    raw = yaml.safe_load(config.read_text(encoding="utf-8"))
    raw["model"].update(values)
    config.write_text(yaml.safe_dump(raw, sort_keys=False), encoding="utf-8")
    return config


def checkpoint(tmp_path: Path, model_type: str) -> str:
    folder = tmp_path / model_type
    folder.mkdir()
    (folder / "config.json").write_text(json.dumps({"model_type": model_type}), encoding="utf-8")
    return str(folder)


def test_every_table_template_is_registered_in_llamafactory() -> None:
    known = llamafactory_templates()
    assert len(known) > 50 and "qwen2_vl" in known and "cogvlm2" not in known
    for backbone in BACKBONES.values():
        assert set(backbone.templates) <= known, backbone.family
        assert set(backbone.thinking) <= set(backbone.templates)
    assert backbone_of("qwen3_vl_nothink") is BACKBONES["qwen3_vl"] and backbone_of("llava") is None


@pytest.mark.parametrize(
    ("template", "model_type", "expected"),
    [
        ("qwen2vl", None, "'qwen2vl' is not a LLaMA-Factory template (did you mean 'qwen2_vl'"),
        ("cogvlm2", None, "cannot be trained by LLaMA-Factory 0.9.5"),
        ("qwen2_vl", "cogvlm2", "cannot be trained by LLaMA-Factory 0.9.5"),
        ("intern_vl", "qwen2_vl", "is for intern_vl models, but model.base is a 'qwen2_vl' checkpoint"),
        ("qwen2_vl", "internvl", "use 'intern_vl'"),
        ("glm4v", "qwen3_vl", "use 'qwen3_vl_nothink'"),
    ],
)
def test_bad_template_is_one_error_naming_the_fix(tmp_path: Path, template: str, model_type: str | None,
                                                 expected: str) -> None:
    base = checkpoint(tmp_path, model_type) if model_type else "org/hub-model"
    errors, _ = check_model(base, template)
    assert len(errors) == 1 and expected in errors[0] and errors[0].startswith("config error: model.template:")


@pytest.mark.parametrize(("template", "model_type"), [("qwen2_vl", "qwen2_5_vl"), ("intern_vl", "internvl"),
                                                      ("qwen3_vl_nothink", "qwen3_vl"),
                                                      ("llava", "llava")])
def test_matching_template_passes(tmp_path: Path, template: str, model_type: str) -> None:
    assert check_model(checkpoint(tmp_path, model_type), template) == ([], [])


@pytest.mark.parametrize(("model_type", "template", "advice"), [("qwen3_vl", "qwen3_vl", "'qwen3_vl_nothink'"),
                                                                ("glm4v", "glm4v", "enable_thinking: false")])
def test_thinking_template_warns_with_the_way_out(tmp_path: Path, model_type: str, template: str, advice: str) -> None:
    errors, warnings = check_model(checkpoint(tmp_path, model_type), template)
    assert errors == [] and len(warnings) == 1 and advice in warnings[0] and "empty <think> block" in warnings[0]


def test_config_load_checks_the_model_and_orm_templates(run_config, tiny_model: Path) -> None:
    with pytest.raises(ConfigError) as err:
        load_config(with_model(run_config(), template="intern_vl"))
    assert err.value.lines == [
        f"config error: model.template: 'intern_vl' is for intern_vl models, but model.base is a 'qwen2_vl' "
        f"checkpoint ({tiny_model / 'config.json'}); use 'qwen2_vl'"
    ]
    local = {"model_name_or_path": str(tiny_model), "template": "intern_vl"}
    with pytest.raises(ConfigError, match=r"orm\.local\.template: 'intern_vl' is for intern_vl models"):
        load_config(run_config(orm={"backend": "local", "policy": "orm", "local": local}))


@pytest.mark.parametrize("template", ["cogvlm2", "intern_vl"])
def test_dry_run_with_a_wrong_backbone_exits_2_with_one_line(run_config, template: str) -> None:
    config = with_model(run_config(), template=template)
    proc = subprocess.run([sys.executable, "main.py", "--config", str(config), "--stage", "all", "--dry-run"],
                          cwd=PROJECT_ROOT, capture_output=True, text=True, timeout=120)
    lines = proc.stderr.strip().splitlines()
    assert proc.returncode == 2 and len(lines) == 1 and lines[0].startswith("config error: model.template:"), proc
    assert ("CogVLM2" if template == "cogvlm2" else "use 'qwen2_vl'") in lines[0]


# ---------------------------------------------------------------------------------------------
# Each family, on a tiny model of it (mathse/demo/tiny_backbones.py)

FAMILIES = sorted(TINY_FAMILIES)


@pytest.fixture(scope="module")
def tiny_family(tmp_path_factory: pytest.TempPathFactory) -> Callable[[str], Path]:
    """Factory: the tiny model of a family, built once per module."""
    root = tmp_path_factory.mktemp("backbones")
    built: dict[str, Path] = {}

    def get(family: str) -> Path:
        if family not in built:
            built[family] = build_tiny(family, root / family)
        return built[family]

    return get


@pytest.fixture(scope="module")
def picture(tmp_path_factory: pytest.TempPathFactory) -> str:
    path = tmp_path_factory.mktemp("picture") / "p.png"
    Image.new("RGB", (640, 480), (30, 90, 160)).save(path)
    return str(path)


@pytest.mark.parametrize("family", FAMILIES)
def test_tiny_checkpoints_pass_the_config_check_with_their_template(tiny_family, family: str) -> None:
    errors, warnings = check_model(str(tiny_family(family)), TINY_FAMILIES[family])
    assert errors == [] and len(warnings) == (family == "glm4v")  # GLM-4.1V's only template thinks


@pytest.mark.parametrize("family", FAMILIES)
def test_token_budget_counts_each_familys_image_tokens_and_stops_before_training(
    tiny_family, picture: str, tmp_path: Path, family: str
) -> None:
    """The image tokens are found (InternVL's are <IMG_CONTEXT>, not its template's <image>), so a
    cutoff_len that cuts them stops the dataset with one line naming the cutoff that fits."""
    model = str(tiny_family(family))
    example = SftExample(prompt="How many squares?", response="Step 1: count.\nThe final answer is 3.",
                         images=(picture,), id="p1")
    roomy = TokenBudget(model, ModelInputs(TINY_FAMILIES[family], cutoff_len=4096))
    source, target, image_end = roomy.lengths(example)
    assert 0 < image_end <= source and roomy.needed(example) is None
    # Counted from the file header (Qwen-style) or by full processing: the same as full processing.
    tokenizer, processor, template, _ = roomy._parts
    full = TokenBudget(model, roomy.inputs)
    full.__dict__["_parts"] = (tokenizer, processor, template, template.mm_plugin)
    assert full.lengths(example) == (source, target, image_end)
    tight = TokenBudget(model, ModelInputs(TINY_FAMILIES[family], cutoff_len=image_end // 2), policy="stop")
    assert tight.needed(example) == source + target
    with pytest.raises(DataError) as err:
        write_sharegpt_dataset([example], tmp_path, "d", tight)
    assert "\n" not in str(err.value) and f"cutoff_len {source + target} fits them all" in str(err.value)
    assert not (tmp_path / "d.json").exists()


def test_token_budget_refuses_an_image_it_cannot_find(tiny_model: Path, picture: str) -> None:
    """A template that does not expand images for this model: an error, never "fits"."""
    from llamafactory.data.mm_plugin import BasePlugin  # leaves "<image>" unexpanded

    blind = TokenBudget(str(tiny_model), ModelInputs("qwen2_vl"))
    tokenizer, processor, template, _ = blind._parts
    blind.__dict__["_parts"] = (tokenizer, processor, template, BasePlugin("<image>", None, None))
    example = SftExample(prompt="?", response="3", images=(picture,), id="p9")
    with pytest.raises(DataError, match=r"example p9: 1 image\(s\) but no image token"):
        blind.lengths(example)


@pytest.mark.slow
@pytest.mark.parametrize("family", FAMILIES)
def test_each_family_trains_through_the_pipeline_and_generates(tiny_family, demo_data, tmp_path: Path,
                                                               family: str) -> None:
    """The pipeline's own pieces on each backbone: dataset (counted by the token budget), a real
    `llamafactory-cli train` composed from the config, greedy generation from the trained checkpoint
    with the images, through the in-process engine (the positions adapter where the family needs it)."""
    seed_file, pool_file = demo_data
    settings = {"max_steps": 2, "save_steps": 1000, "per_device_train_batch_size": 2, "logging_steps": 1,
                "cutoff_len": 1024}
    config = write_run_config(tmp_path, tiny_family(family), seed_file, pool_file, llama_factory=settings)
    cfg = load_config(with_model(config, template=TINY_FAMILIES[family]))
    problems = read_problems(seed_file)[:4]
    examples = [SftExample(prompt=student_prompt(p), response=p.solution or f"The final answer is {p.answer}.",
                           images=p.images, id=p.id) for p in problems]
    assert write_sharegpt_dataset(examples, tmp_path / "data", "d", TokenBudget.for_training(cfg, "m0")) == 4
    job = compose_train_job(cfg, name="m0", training="m0", datasets=["d"], dataset_dir=tmp_path / "data",
                            output_dir=tmp_path / "model", run_dir=tmp_path / "run")
    checkpoint = run_train_job(job)
    inf = InferenceConfig(temperature=0.0, max_new_tokens=8)
    items = make_items(problems[:2], 1)
    with Generator(checkpoint, None, model_inputs(cfg, "rounds"), inf) as gen, \
            Journal(tmp_path / "gen.jsonl") as journal:
        stats = gen.generate(items, journal)
    assert (stats.done, stats.failed) == (2, 0)
    assert all(isinstance(journal.get(i.key)["response"], str) for i in items)


def test_served_engine_gets_each_familys_image_arguments() -> None:
    """vLLM's processor arguments that keep an image's vision tokens as in training, per family."""
    assert ModelInputs("qwen2_vl", 262144).served_image_kwargs() == {"max_pixels": 262144}
    assert ModelInputs("qwen3_vl_nothink").served_image_kwargs() == {}
    # vLLM's InternVL processor tiles by default; LLaMA-Factory trains one tile unless crop_to_patches.
    assert ModelInputs("intern_vl", 262144).served_image_kwargs() == {"crop_to_patches": False}
    assert ModelInputs("intern_vl", crop_to_patches=True).served_image_kwargs() == {"crop_to_patches": True,
                                                                                     "max_patches": 12}
    assert ModelInputs("glm4v", 262144).served_image_kwargs() == {}  # its processor ignores max_pixels
    assert ModelInputs("llava", 262144).served_image_kwargs() == {}
    assert ModelInputs("intern_vl", crop_to_patches=True).chat_model_args()["crop_to_patches"] is True
