"""The backbone table (mathse/model/backbones.py) and the config checks it drives."""

from __future__ import annotations

import json
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
import yaml
from PIL import Image

from mathse.cli import main
from mathse.demo.tiny_backbones import TINY_FAMILIES, build_tiny
from mathse.model.backbones import BACKBONES, backbone_of, check_model, llamafactory_templates
from mathse.model.generation_items import make_items
from mathse.model.inference import Generator
from mathse.model.inputs import ModelInputs, model_inputs
from mathse.model.token_budget import TokenBudget
from mathse.model.training_data import write_sharegpt_dataset
from mathse.run import layout
from mathse.run.config import ConfigError, InferenceConfig
from mathse.run.config_loading import load_config
from mathse.run.errors import DataError
from mathse.run.records import SftExample, read_problems
from mathse.run.rounds import WHOLE, generations_path
from mathse.run.storage import Journal, is_done, iter_jsonl
from mathse.testing.openai_server import FakeOpenAIServer
from tests.conftest import PROJECT_ROOT, VLLM_CPU_SERVE, vllm_python, write_run_config
from tests.model.test_servers import wait_gone


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


def test_dry_run_with_qwen2_vl_on_an_internvl_folder_exits_2_with_one_line(tmp_path: Path, demo_data) -> None:
    """The issue's acceptance case: the template of one family on a real (tiny) checkpoint of another."""
    model = build_tiny("intern_vl", tmp_path / "internvl")
    config = with_model(write_run_config(tmp_path, model, *demo_data), template="qwen2_vl")
    proc = subprocess.run([sys.executable, "main.py", "--config", str(config), "--stage", "all", "--dry-run"],
                          cwd=PROJECT_ROOT, capture_output=True, text=True, timeout=120)
    lines = proc.stderr.strip().splitlines()
    assert proc.returncode == 2 and len(lines) == 1, proc
    assert lines[0].startswith("config error: model.template: 'qwen2_vl' is for qwen2_vl models") and \
        "'internvl' checkpoint" in lines[0] and "use 'intern_vl'" in lines[0], lines


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


def teacher_reply(body: dict[str, Any]) -> str:
    return "Step 1: Count the squares.\nThe final answer is \\boxed{3}"


@pytest.mark.slow
@pytest.mark.xdist_group("vllm")
@pytest.mark.parametrize("family", FAMILIES)
def test_each_family_distills_and_evolves_through_vllm_as_in_process(tiny_family, demo_data, tmp_path: Path,
                                                                    family: str) -> None:
    """Each backbone through the CLI: distill (teacher over HTTP, a real `llamafactory-cli train` of
    M0), one evolve round whose paths vLLM generates from M0, judged, and a real retrain. Then the
    in-process engine answers the same items from M0: the texts must be vLLM's. The images are larger
    than the training's image_max_pixels, so LLaMA-Factory resizes them: vLLM must get the same pixels
    (served_images.py) and the same prompt (chat_templates.py) or a random model writes other text."""
    seed_file, pool_file = demo_data
    accept = '{"correct": true, "error_step": null, "analysis": "All steps hold."}'
    with FakeOpenAIServer(replies=teacher_reply) as teacher, FakeOpenAIServer(replies=lambda body: accept) as orm:
        sections: dict[str, Any] = {
            "teacher": {"base_url": teacher.base_url, "model": "teacher", "filter_by_answer": False},
            # An ORM over HTTP that accepts every path, so that the round has data to retrain on.
            "orm": {"backend": "api", "policy": "orm", "api": {"base_url": orm.base_url, "model": "orm"}},
            "llama_factory": {"max_steps": 2, "save_steps": 1000, "per_device_train_batch_size": 2,
                              "logging_steps": 1, "cutoff_len": 1024, "image_max_pixels": 3000},
            "inference": {"backend": "served", "temperature": 0, "n_paths": 1, "max_new_tokens": 12,
                          "concurrency": 4},
            "serve": {**VLLM_CPU_SERVE, "python": vllm_python()},
            "evolve": {"rounds": 1, "batch_size": 6, "retrain": True},
        }
        config = with_model(write_run_config(tmp_path, tiny_family(family), seed_file, pool_file, **sections),
                            template=TINY_FAMILIES[family])
        assert main(["--stage", "distill", "--config", str(config)]) == 0
        assert main(["--stage", "evolve", "--config", str(config)]) == 0
    cfg = load_config(config)
    assert not wait_gone(str(cfg.output_dir)) and not wait_gone(vllm_python())  # servers stopped
    assert is_done(layout.round_model_dir(cfg, 1)), "round 1 retrained"
    served = {row["key"]: row for row in iter_jsonl(generations_path(cfg, 1, WHOLE))}
    assert len(served) == 6 and all(isinstance(row["response"], str) for row in served.values())
    by_id = {p.id: p for p in read_problems(pool_file)}
    items = [item for item in make_items([by_id[row["id"]] for row in served.values()], 1) if item.key in served]
    inf = InferenceConfig(temperature=0.0, max_new_tokens=12)
    with Generator(cfg.model_path("sft_model_stage0"), None, model_inputs(cfg, "rounds"), inf) as gen, \
            Journal(tmp_path / "in_process.jsonl") as journal:
        assert gen.generate(items, journal).done == 6
        # A length-cut text may end inside a character: vLLM holds those bytes back, the in-process
        # engine shows U+FFFD. Otherwise equal (measured: 6 of 6 for the Qwen families and InternVL;
        # with the checkpoint's own template instead of LLaMA-Factory's, InternVL 0 of 6, GLM 3 of 6).
        # GLM-4.1V: 4 of 6 when its processor resizes the image (6 of 6 when it does not): two
        # texts switch from "in" to "\n" a token apart. Not found yet; see benchmarks/RESULTS.md.
        ours = {i.key: journal.get(i.key)["response"].rstrip("\ufffd") for i in items}
    theirs = {key: row["response"].rstrip("\ufffd") for key, row in served.items()}
    assert sum(ours[key] == theirs[key] for key in theirs) >= (4 if family == "glm4v" else 6), (ours, theirs)


def test_served_engine_gets_each_familys_image_arguments() -> None:
    """vLLM's processor arguments that keep an image's vision tokens as in training, per family."""
    assert ModelInputs("qwen2_vl", 262144).served_image_kwargs() == {}  # images arrive resized (served_images.py)
    assert ModelInputs("qwen3_vl_nothink").served_image_kwargs() == {}
    # vLLM's InternVL processor tiles by default; LLaMA-Factory trains one tile unless crop_to_patches.
    assert ModelInputs("intern_vl", 262144).served_image_kwargs() == {"crop_to_patches": False}
    assert ModelInputs("intern_vl", crop_to_patches=True).served_image_kwargs() == {"crop_to_patches": True,
                                                                                     "max_patches": 12}
    assert ModelInputs("glm4v", 262144).served_image_kwargs() == {}  # its processor ignores max_pixels
    assert ModelInputs("llava", 262144).served_image_kwargs() == {}
    assert ModelInputs("intern_vl", crop_to_patches=True).chat_model_args()["crop_to_patches"] is True
