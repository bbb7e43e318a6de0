"""Token counts of training examples, checked against LLaMA-Factory's own full processing."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from PIL import Image

from mathse.judging.verdict import ORM_SYSTEM_PROMPT
from mathse.model.inputs import ModelInputs
from mathse.model.token_budget import TokenBudget, _qwen_grids
from mathse.model.training_data import write_sharegpt_dataset
from mathse.run.config_loading import load_config
from mathse.run.fingerprint import Inputs
from mathse.run.records import DataError, SftExample

SIZES = [(640, 480), (30, 2000), (5000, 100), (100, 100), (28, 28), (3000, 3000), (10, 10), (7000, 20), (333, 517)]


@pytest.fixture(scope="module")
def images(tmp_path_factory: pytest.TempPathFactory) -> dict[tuple[int, int], str]:
    folder = tmp_path_factory.mktemp("sizes")
    found = {}
    for w, h in SIZES:
        path = folder / f"{w}x{h}.png"
        Image.new("RGB", (w, h), (w % 255, h % 255, 0)).save(path)
        found[(w, h)] = str(path)
    return found


@pytest.mark.parametrize("max_pixels", [12544, 262144])
def test_image_grids_from_headers_equal_the_processors(tiny_model: Path, images, max_pixels: int) -> None:
    budget = TokenBudget(str(tiny_model), ModelInputs("qwen2_vl", max_pixels, 32 * 32, cutoff_len=256))
    _, processor, template, plugin = budget._parts
    for size, path in images.items():
        fast = _qwen_grids(plugin, [path], [], [], processor)["image_grid_thw"].tolist()
        full = template.mm_plugin._get_mm_inputs([path], [], [], processor)["image_grid_thw"].tolist()
        assert fast == full, size


def test_lengths_equal_llamafactory_supervised_encoding(tiny_model: Path, images) -> None:
    from llamafactory.data.processor.supervised import SupervisedDatasetProcessor
    from llamafactory.hparams import DataArguments

    budget = TokenBudget(str(tiny_model), ModelInputs("qwen2_vl", 12544, 32 * 32, cutoff_len=256))
    tokenizer, processor, template, _ = budget._parts
    encoder = SupervisedDatasetProcessor(template=template, tokenizer=tokenizer, processor=processor,
                                         data_args=DataArguments(template="qwen2_vl", cutoff_len=100_000))
    for system in (None, ORM_SYSTEM_PROMPT):
        for path in (images[(640, 480)], images[(30, 2000)]):
            example = SftExample(prompt="How many dots? " * 40, response="Step 1: count.\n" * 30, images=(path,),
                                 system=system)
            ids, _ = encoder._encode_data_example([{"role": "user", "content": "<image>" + example.prompt}],
                                                  [{"role": "assistant", "content": example.response}],
                                                  system, None, [path], [], [])
            source, target, image_end = budget.lengths(example)
            assert source + target == len(ids) and 0 < image_end < source


def test_only_examples_losing_image_tokens_are_left_out_and_listed(run_config, images, tmp_path: Path,
                                                                    capsys) -> None:
    cfg = load_config(run_config(llama_factory={"cutoff_len": 1024, "image_max_pixels": 12544},
                                 trainings={"orm": {"cutoff_len": 1024}}))
    budget = TokenBudget.for_training(cfg, "orm")
    image = images[(640, 480)]
    short = SftExample(prompt="How many?", response="Step 1: 3.", images=(image,), system=ORM_SYSTEM_PROMPT, id="ok")
    # The ORM's system prompt comes before the image: with a long path and reply, LLaMA-Factory
    # cuts both, and the prompt's cut reaches the image tokens.
    long = SftExample(prompt="count again " * 300, response="Step 1: recount. " * 400, images=(image,),
                      system=ORM_SYSTEM_PROMPT, id="long")
    text_only = SftExample(prompt="word " * 2000, response="ok", id="text")  # truncation is harmless here
    assert budget.needed(short) is None and budget.needed(text_only) is None
    needed = budget.needed(long)
    assert needed is not None and needed > 1024

    written = write_sharegpt_dataset([short, long, text_only], tmp_path, "d", budget)
    assert written == 2 and len(json.loads((tmp_path / "d.json").read_text())) == 2
    [listed] = [json.loads(line) for line in (tmp_path / "d.too_long.jsonl").read_text().splitlines()]
    assert listed["id"] == "long" and listed["tokens"] == needed
    printed = capsys.readouterr().out
    assert f"dataset d: left out 1 examples whose image tokens do not fit trainings.orm.cutoff_len=1024 " \
           f"(cutoff_len {needed} fits them all)" in printed

    # "stop": nothing written, one line with the count and the cutoff_len that fits.
    cfg = load_config(run_config(llama_factory={"cutoff_len": 256, "too_long": "stop"},
                                 trainings={"orm": {"cutoff_len": 1000}}))
    with pytest.raises(DataError) as err:
        write_sharegpt_dataset([short, long], tmp_path, "e", TokenBudget.for_training(cfg, "orm"))
    assert "\n" not in str(err.value) and "trainings.orm.cutoff_len=1000" in str(err.value)
    assert f"cutoff_len {needed} fits them all" in str(err.value) and not (tmp_path / "e.json").exists()


def test_no_example_fitting_is_an_error_even_when_dropping(run_config, images, tmp_path: Path) -> None:
    # Below the ORM's system prompt alone.
    cfg = load_config(run_config(llama_factory={"cutoff_len": 256}, trainings={"orm": {}}))
    example = SftExample(prompt="How many?", response="Step 1: 3.", images=(images[(640, 480)],),
                         system=ORM_SYSTEM_PROMPT, id="p1")
    with pytest.raises(DataError, match=r"dataset d: none of its 1 examples keeps its image tokens"):
        write_sharegpt_dataset([example], tmp_path, "d", TokenBudget.for_training(cfg, "orm"))


def test_a_datasets_marker_records_what_decides_the_budget(run_config) -> None:
    """The budget as a marker records it: every setting that changes which examples fit (a changed
    cutoff_len makes the data stale), with the keys markers have always had (a run resumes across versions)."""
    cfg = load_config(run_config(llama_factory={"cutoff_len": 300, "image_max_pixels": 12544}))
    recorded = Inputs().budget("b", TokenBudget.for_training(cfg, "m0")).values["b"]
    assert recorded == {"model_path": cfg.model.base, "template": "qwen2_vl", "cutoff_len": 300,
                        "image_max_pixels": 12544, "image_min_pixels": 32 * 32, "policy": "drop"}
    longer = load_config(run_config(llama_factory={"cutoff_len": 400, "image_max_pixels": 12544}))
    assert Inputs().budget("b", TokenBudget.for_training(longer, "m0")).values["b"]["cutoff_len"] == 400
