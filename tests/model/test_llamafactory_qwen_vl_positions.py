"""The Qwen-VL positions adapter (mathse/model/llamafactory_qwen_vl_positions.py), and training vs inference.

The adapter makes LLaMA-Factory's chat engine hand the model the `mm_token_type_ids` the processor
would; the slow test checks the other side of the contract: the loss LLaMA-Factory's trainer
computes on an example equals the teacher-forced loss of the same example built the way inference
builds it, so training and inference cannot silently disagree about a model's inputs again.
"""

from __future__ import annotations

import json
import subprocess
from pathlib import Path

import pytest
import torch
import yaml
from PIL import Image

from mathse.demo.problems import countdown_solution
from mathse.model.generation_items import user_turn
from mathse.model.llamafactory_qwen_vl_positions import install, load_chat_model, patched_plugins
from mathse.model.prompts import student_prompt
from mathse.model.training import llamafactory_command, llamafactory_env
from mathse.model.training_data import write_sharegpt_dataset
from mathse.run.records import SftExample, read_problems


def test_install_wraps_the_whole_qwen2_vl_family_once() -> None:
    from llamafactory.data import mm_plugin

    install()
    wrapped = set(patched_plugins())
    assert {"Qwen2VLPlugin", "Qwen3VLPlugin", "GLM4VPlugin", "Qwen2OmniPlugin"} <= wrapped
    assert all(issubclass(getattr(mm_plugin, name), mm_plugin.Qwen2VLPlugin) for name in wrapped)
    assert install() == []  # a second install wraps nothing again
    assert not getattr(mm_plugin.BasePlugin.get_mm_inputs, "__mathse_adds_mm_token_type_ids__", False)


def test_adds_the_ids_the_processor_returns_and_only_for_media(tiny_model: Path, demo_data) -> None:
    from llamafactory.data.mm_plugin import get_mm_plugin
    from transformers import AutoProcessor

    install()
    processor = AutoProcessor.from_pretrained(tiny_model, min_pixels=56 * 56, max_pixels=112 * 112)
    plugin = get_mm_plugin("qwen2_vl", image_token="<|image_pad|>", video_token="<|video_pad|>")
    image = Image.open(read_problems(demo_data[0])[0].images[0]).convert("RGB")
    text = "<|vision_start|><|image_pad|><|vision_end|>What is shown?"
    expected = processor(text=[text], images=[image], return_tensors="pt")
    batch_ids = expected["input_ids"].tolist()  # the image tokens already expanded, as the engine has them
    args = {"images": [image], "videos": [], "audios": [], "imglens": [1], "vidlens": [0], "audlens": [0]}
    mm_inputs = plugin.get_mm_inputs(**args, batch_ids=batch_ids, processor=processor)
    assert mm_inputs["mm_token_type_ids"] == expected["mm_token_type_ids"].tolist()
    assert 1 in mm_inputs["mm_token_type_ids"][0]
    text_only = {**args, "images": [], "imglens": [0]}
    assert "mm_token_type_ids" not in plugin.get_mm_inputs(**text_only, batch_ids=[[1, 2]], processor=processor)
    # When LLaMA-Factory's own plugin returns them, the adapter has nothing left to do and can go
    # (see its module docstring): this line then fails to say so.
    original = plugin.get_mm_inputs.__wrapped__(plugin, **args, batch_ids=batch_ids, processor=processor)
    assert "mm_token_type_ids" not in original


@pytest.mark.slow
def test_trainer_loss_equals_the_teacher_forced_loss_of_the_inference_inputs(
    countdown_model: Path, countdown_data: dict[str, Path], tmp_path: Path
) -> None:
    problem = read_problems(countdown_data["test"])[1]
    a, b = (int(x) for x in problem.question[len("What is "):-1].split(" + "))
    response = countdown_solution(a, b)

    # LLaMA-Factory's trainer (evaluation: its collator, position ids and loss, no update) on the example.
    write_sharegpt_dataset([SftExample(prompt=student_prompt(problem), response=response,
                                       images=problem.images)], tmp_path / "data", "one")
    args = {"model_name_or_path": str(countdown_model), "template": "qwen2_vl", "stage": "sft", "do_train": False,
            "do_eval": True, "eval_dataset": "one", "dataset_dir": str(tmp_path / "data"), "cutoff_len": 512,
            "image_max_pixels": 12544, "finetuning_type": "full", "per_device_eval_batch_size": 1,
            "output_dir": str(tmp_path / "eval"), "report_to": "none", "bf16": False,
            "preprocessing_num_workers": 1, "dataloader_num_workers": 0}
    (tmp_path / "eval.yaml").write_text(yaml.safe_dump(args))
    done = subprocess.run(llamafactory_command("train", str(tmp_path / "eval.yaml")), env=llamafactory_env(),
                          capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    trainer_loss = json.loads((tmp_path / "eval" / "eval_results.json").read_text())["eval_loss"]

    # The same example as the in-process engine builds a request (its own code), teacher-forced.
    from llamafactory.chat.hf_engine import HuggingfaceEngine

    chat = load_chat_model({"model_name_or_path": str(countdown_model), "template": "qwen2_vl",
                            "infer_backend": "huggingface", "image_max_pixels": 12544, "do_sample": False})
    engine = chat.engine
    image = Image.open(problem.images[0]).convert("RGB")
    gen_kwargs, prompt_length = HuggingfaceEngine._process_args(
        engine.model, engine.tokenizer, engine.processor, engine.template, engine.generating_args,
        [{"role": "user", "content": user_turn(problem)}], images=[image])
    prompt_ids = gen_kwargs["inputs"][0].tolist()
    messages = engine.template.mm_plugin.process_messages(
        [{"role": "user", "content": user_turn(problem)}, {"role": "assistant", "content": response}],
        [image], [], [], engine.processor)
    same_prompt, response_ids = engine.template.encode_oneturn(engine.tokenizer, messages)
    assert same_prompt == prompt_ids and len(prompt_ids) == prompt_length
    input_ids = torch.tensor([prompt_ids + response_ids])
    labels = torch.tensor([[-100] * len(prompt_ids) + response_ids])
    media = {k: v for k, v in gen_kwargs.items() if k not in ("inputs", "attention_mask", "generation_config")}
    media["mm_token_type_ids"] = torch.cat([media["mm_token_type_ids"],
                                            torch.zeros((1, len(response_ids)), dtype=torch.long)], dim=1)
    with torch.no_grad():
        inference_loss = engine.model(input_ids=input_ids, labels=labels, **media).loss.item()
        # What the engine used to do: plain text positions for every token, image tokens included.
        text_positions = torch.arange(input_ids.shape[1]).view(1, 1, -1).expand(3, 1, -1)
        unpatched_loss = engine.model(input_ids=input_ids, labels=labels, position_ids=text_positions,
                                      **{k: v for k, v in media.items() if k != "mm_token_type_ids"}).loss.item()
    assert inference_loss == pytest.approx(trainer_loss, rel=1e-4, abs=1e-5), (trainer_loss, inference_loss)
    assert abs(unpatched_loss - trainer_loss) > 1e-3, (trainer_loss, unpatched_loss)
