"""Batch generation: ChatModel args, journal resume, image errors, determinism, concurrency bounds."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

from mathse.model.generation_items import GenerationError, GenItem, make_items, user_turn
from mathse.model.inference import Generator, chat_model_args
from mathse.model.inputs import ModelInputs, model_inputs
from mathse.run.config import ConfigError, InferenceConfig
from mathse.run.config_loading import load_config
from mathse.run.records import Problem, read_problems
from mathse.run.storage import Journal, iter_jsonl
from mathse.testing.chat_model import FakeChatModel

ROW_FIELDS = {"key", "id", "sample", "response", "prompt", "images", "finish_reason", "gen_s"}


QWEN2_VL = ModelInputs("qwen2_vl")  # the tiny model's input settings, LLaMA-Factory's defaults


def _inf(**kw: Any) -> InferenceConfig:
    base: dict[str, Any] = {"temperature": 0.7, "max_new_tokens": 12, "n_paths": 2, "concurrency": 4}
    return InferenceConfig(**(base | kw))


def _rows(path: Path) -> list[dict[str, Any]]:
    return list(iter_jsonl(path))


# ---------------------------------------------------------------------------------------------
# chat_model_args (no model)


def test_chat_model_args_maps_config() -> None:
    inf = InferenceConfig(temperature=0.0, top_p=0.9, max_new_tokens=77, extra={"top_p": 0.5, "infer_dtype": "float16"})
    args = chat_model_args("/m", None, ModelInputs("qwen2_vl", 12544), inf)
    assert args["model_name_or_path"] == "/m" and args["template"] == "qwen2_vl"
    assert args["infer_backend"] == "huggingface" and args["finetuning_type"] == "full"
    assert args["do_sample"] is False  # LLaMA-Factory's default is True
    assert args["max_new_tokens"] == 77 and args["image_max_pixels"] == 12544
    assert args["top_p"] == 0.5 and args["infer_dtype"] == "float16"  # extra merged last
    assert "adapter_name_or_path" not in args and "vllm_maxlen" not in args

    vllm = chat_model_args("/m", "/a", QWEN2_VL, InferenceConfig(backend="vllm", vllm_gpu_util=0.5, vllm_maxlen=999))
    assert vllm["infer_backend"] == "vllm" and vllm["do_sample"] is True
    assert vllm["adapter_name_or_path"] == "/a" and vllm["finetuning_type"] == "lora"
    assert vllm["vllm_gpu_util"] == 0.5 and vllm["vllm_maxlen"] == 999

    sgl = chat_model_args("/m", None, QWEN2_VL, InferenceConfig(backend="sglang", vllm_gpu_util=0.6))
    assert sgl["infer_backend"] == "sglang" and sgl["sglang_mem_fraction"] == 0.6


def test_model_inputs_carry_the_training_image_size_and_template(run_config: Any, tiny_model: Path) -> None:
    cfg = load_config(run_config())
    student = model_inputs(cfg, "rounds")
    assert student.image_max_pixels == 12544  # the demo config's llama_factory override
    gen = Generator(tiny_model, None, student, cfg.inference, seed=cfg.run.seed)
    assert gen.args["image_max_pixels"] == 12544 and gen.args["template"] == "qwen2_vl"
    assert gen.seed == cfg.run.seed and not gen.loaded
    # Without our override the recipe's value applies (it differs from LLaMA-Factory's default).
    cfg = load_config(run_config(llama_factory={"image_max_pixels": None}))
    assert model_inputs(cfg, "rounds").image_max_pixels == 262144


def test_make_items_and_user_turn() -> None:
    p = Problem(id="p1", question="What is 1+1?", images=("a.png", "b.png"), answer="2")
    items = make_items([p], 3)
    assert [i.key for i in items] == ["p1#0", "p1#1", "p1#2"] and [i.sample_index for i in items] == [0, 1, 2]
    assert user_turn(p).startswith("<image><image>What is 1+1?")


# ---------------------------------------------------------------------------------------------
# Orchestration with a stand-in ChatModel (fast): streaming, bounds, failures


def _fake_generator(fake: FakeChatModel, **inf: Any) -> Generator:
    return Generator("/nowhere", None, QWEN2_VL, _inf(**inf), chat_model_factory=lambda args: fake)


def test_streams_rows_and_bounds_concurrency(tmp_path: Path, demo_data: tuple[Path, Path]) -> None:
    problems = read_problems(demo_data[1])
    path = tmp_path / "gen.jsonl"
    fake = FakeChatModel(path, delay=0.01)
    with _fake_generator(fake, concurrency=3) as gen, Journal(path) as journal:
        stats = gen.generate(make_items(problems, 2), journal, paths_per_request=1)
    assert stats.done == 2 * len(problems) and stats.failed == 0
    assert fake.max_in_flight == 3
    # Rows reach the file while later requests are still being made: streamed, not held to the end.
    assert fake.calls[-1]["rows_on_disk"] >= len(fake.calls) - 3 - 1
    # (three in flight: which request the fake records first is the scheduler's choice)
    first = next(c for c in fake.calls if c["content"] == user_turn(problems[0]))
    assert first["n_images"] == 1

    seq = FakeChatModel(tmp_path / "seq.jsonl")
    with _fake_generator(seq) as gen, Journal(seq.journal_path) as journal:
        gen.generate(make_items(problems[:4], 1), journal, concurrency=1)
    assert [c["rows_on_disk"] for c in seq.calls] == [0, 1, 2, 3]


def test_paths_of_a_problem_are_grouped_when_sampling_on_huggingface(tmp_path: Path, demo_data) -> None:
    problems = read_problems(demo_data[0])[:3]
    fake = FakeChatModel(tmp_path / "g.jsonl")
    with _fake_generator(fake) as gen, Journal(fake.journal_path) as journal:
        stats = gen.generate(make_items(problems, 4), journal)
    assert stats.done == 12 and len(fake.calls) == 3
    assert all(c["kw"] == {"num_return_sequences": 4} for c in fake.calls)
    assert len({r["response"] for r in _rows(fake.journal_path)}) == 12

    greedy = FakeChatModel(tmp_path / "t0.jsonl")  # temperature 0: never grouped (see _group_size)
    with _fake_generator(greedy, temperature=0.0) as gen, Journal(greedy.journal_path) as journal:
        gen.generate(make_items(problems, 2), journal)
    assert len(greedy.calls) == 6 and all(c["kw"] == {} for c in greedy.calls)


def test_generation_errors_are_retried_and_a_dead_engine_stops(tmp_path: Path, demo_data) -> None:
    problems = read_problems(demo_data[0])
    path = tmp_path / "gen.jsonl"
    flaky = FakeChatModel(path, fail=lambda call: call in (2, 5))
    with _fake_generator(flaky, concurrency=1) as gen, Journal(path) as journal:
        stats = gen.generate(make_items(problems, 1), journal)
    assert stats.failed == stats.retry_later == 2 and stats.done == len(problems) - 2
    assert len(_rows(path)) == len(problems) - 2  # failures are not journaled...
    healthy = FakeChatModel(path)
    with _fake_generator(healthy) as gen, Journal(path) as journal:
        again = gen.generate(make_items(problems, 1), journal)
    assert again.done == 2 and len(healthy.calls) == 2  # ...so a rerun does exactly them

    dead = FakeChatModel(tmp_path / "dead.jsonl", fail=lambda call: True)
    gen = Generator(
        "/m", None, QWEN2_VL, _inf(concurrency=2), max_consecutive_failures=3, chat_model_factory=lambda a: dead
    )
    # two requests in flight: the one failing alongside the third may be counted before the stop
    with gen, Journal(dead.journal_path) as journal, pytest.raises(GenerationError, match=r"[34] generation requests"):
        gen.generate(make_items(problems, 1), journal)
    assert len(dead.calls) < len(problems)


def test_duplicate_keys_and_sglang_images_are_refused(tmp_path: Path, demo_data) -> None:
    problems = read_problems(demo_data[0])[:2]
    fake = FakeChatModel(tmp_path / "x.jsonl")
    items = [*make_items(problems, 1), GenItem("seed-0000#0", problems[0], 0)]
    with _fake_generator(fake) as gen, Journal(fake.journal_path) as journal, pytest.raises(ValueError, match="dup"):
        gen.generate(items, journal)
    with _fake_generator(fake, backend="sglang") as gen, Journal(fake.journal_path) as journal:
        with pytest.raises(ConfigError, match="sglang"):
            gen.generate(make_items(problems, 1), journal)
        assert not gen.loaded


# ---------------------------------------------------------------------------------------------
# The real tiny Qwen2-VL through llamafactory.chat.ChatModel (huggingface backend)


@pytest.fixture(scope="module")
def sampler(tiny_model: Path) -> Any:
    with Generator(tiny_model, None, ModelInputs("qwen2_vl", 56 * 56), _inf()) as gen:
        yield gen


@pytest.mark.slow
def test_generates_paths_and_rerun_does_nothing(
    sampler: Generator, tiny_model: Path, tmp_path: Path, demo_data: tuple[Path, Path]
) -> None:
    problems = read_problems(demo_data[0])[:5]
    items = make_items(problems, 2)
    path = tmp_path / "gen.jsonl"
    with Journal(path) as journal:
        stats = sampler.generate(items, journal, progress="test")
    assert (stats.done, stats.skipped_existing, stats.failed) == (10, 0, 0) and stats.paths_per_s > 0
    rows = _rows(path)
    assert sorted(r["key"] for r in rows) == sorted(i.key for i in items)
    for row in rows:
        assert row.keys() >= ROW_FIELDS and "error" not in row
        assert isinstance(row["response"], str) and row["finish_reason"] in ("stop", "length")
        assert row["images"] == list(problems[0].images) or row["id"] != problems[0].id
    assert len({r["response"] for r in rows}) > 5  # sampled paths differ

    before = path.read_bytes()
    fresh = Generator(tiny_model, None, QWEN2_VL, _inf())
    with fresh, Journal(path) as journal:
        again = fresh.generate(items, journal, progress="test")
        assert not fresh.loaded  # nothing to do: the model is never built
    assert (again.done, again.skipped_existing) == (0, 10) and path.read_bytes() == before


@pytest.mark.slow
def test_killed_journal_resumes_only_missing_items(sampler: Generator, tmp_path: Path, demo_data) -> None:
    items = make_items(read_problems(demo_data[1])[:4], 2)
    full = tmp_path / "full.jsonl"
    with Journal(full) as journal:
        sampler.generate(items, journal)
    lines = full.read_text(encoding="utf-8").splitlines(keepends=True)
    killed = tmp_path / "killed.jsonl"
    killed.write_text("".join(lines[:3]) + lines[3][: len(lines[3]) // 2], encoding="utf-8")  # torn 4th line
    kept = {json.loads(line)["key"] for line in lines[:3]}

    with Journal(killed) as journal:
        stats = sampler.generate(items, journal, paths_per_request=1)
    assert (stats.done, stats.skipped_existing) == (len(items) - 3, 3)
    rows = _rows(killed)
    assert len(rows) == len(items) and len({r["key"] for r in rows}) == len(items)
    assert killed.read_text(encoding="utf-8").startswith("".join(lines[:3]))  # kept rows untouched
    assert {r["key"] for r in rows[:3]} == kept


@pytest.mark.slow
def test_missing_or_corrupt_image_is_a_counted_error_row(sampler: Generator, tmp_path: Path, demo_data) -> None:
    good = read_problems(demo_data[0])[0]
    corrupt = tmp_path / "corrupt.png"
    corrupt.write_bytes(b"\x89PNG\r\n\x1a\nnot really a png")
    bad = [
        Problem(id="missing", question="How many?", images=(str(tmp_path / "nope.png"),), answer="1"),
        Problem(id="corrupt", question="How many?", images=(str(corrupt),), answer="1"),
    ]
    path = tmp_path / "gen.jsonl"
    with Journal(path) as journal:
        stats = sampler.generate(make_items([bad[0], good, bad[1]], 2), journal)
    assert (stats.done, stats.failed, stats.retry_later) == (2, 4, 0)
    errors = {r["key"]: r["error"] for r in _rows(path) if "error" in r}
    assert set(errors) == {"missing#0", "missing#1", "corrupt#0", "corrupt#1"}
    assert "not found" in errors["missing#0"] and "unreadable" in errors["corrupt#0"]
    assert all(r["response"] is None for r in _rows(path) if "error" in r)
    with Journal(path) as journal:  # recorded, so not retried
        assert sampler.generate(make_items([bad[0], good, bad[1]], 2), journal).skipped_existing == 6


@pytest.mark.slow
def test_temperature_zero_is_deterministic(tiny_model: Path, tmp_path: Path, demo_data) -> None:
    items = make_items(read_problems(demo_data[0])[:4], 2)
    outputs = []
    with Generator(tiny_model, None, ModelInputs("qwen2_vl", 56 * 56), _inf(temperature=0.0)) as gen:
        for run in range(2):
            with Journal(tmp_path / f"run{run}.jsonl") as journal:
                assert gen.generate(items, journal).done == len(items)
            outputs.append({r["key"]: r["response"] for r in _rows(tmp_path / f"run{run}.jsonl")})
    assert outputs[0] == outputs[1]
    assert outputs[0]["seed-0000#0"] == outputs[0]["seed-0000#1"]  # greedy: every path is the same


@pytest.mark.slow
def test_seeded_sampling_is_reproducible_one_request_at_a_time(sampler: Generator, tmp_path: Path, demo_data) -> None:
    items = make_items(read_problems(demo_data[0])[:3], 2)
    sampler.seed = 123
    try:
        outputs = []
        for run in range(2):
            with Journal(tmp_path / f"run{run}.jsonl") as journal:
                sampler.generate(items, journal, concurrency=1, paths_per_request=1)
            outputs.append({r["key"]: r["response"] for r in _rows(tmp_path / f"run{run}.jsonl")})
        # Resuming a half-done journal yields the same texts: each path's seed depends on its key only.
        with Journal(tmp_path / "resumed.jsonl") as journal:
            sampler.generate(items[3:], journal, concurrency=1, paths_per_request=1)
            sampler.generate(items, journal, concurrency=1, paths_per_request=1)
        resumed = {r["key"]: r["response"] for r in _rows(tmp_path / "resumed.jsonl")}
    finally:
        sampler.seed = None
    assert outputs[0] == outputs[1] == resumed
    assert outputs[0]["seed-0000#0"] != outputs[0]["seed-0000#1"]


@pytest.mark.slow
def test_engine_chatter_goes_to_the_log_not_the_console(tiny_model: Path, tmp_path: Path, demo_data, capfd) -> None:
    """With log_path, the ChatModel's loading lines (LLaMA-Factory, transformers) land in the stage's log."""
    import logging

    import transformers.utils.logging as hf_logging

    verbosity = hf_logging.get_verbosity()
    from llamafactory.extras import logging as lf_logging

    lf_root = lf_logging.get_logger()  # configured now, so its console handler exists before and after
    streams = {h: h.stream for h in lf_root.handlers if type(h) is logging.StreamHandler}
    log = tmp_path / "servers" / "chat_model.log"
    items = make_items(read_problems(demo_data[0])[:1], 1)
    with Generator(tiny_model, None, QWEN2_VL, _inf(), log_path=log) as gen, \
            Journal(tmp_path / "gen.jsonl") as journal:
        assert gen.generate(items, journal).done == 1
    out, err = capfd.readouterr()
    text = log.read_text()
    assert "llamafactory" in text and "loading" in text.lower()  # the engine's own lines
    assert "llamafactory" not in out + err and "loading configuration" not in out + err
    assert "Loading weights" not in out + err  # transformers' load bar is off while the engine loads
    assert hf_logging.get_verbosity() == verbosity and hf_logging.is_progress_bar_enabled()
    # Afterwards the libraries log where they logged before (the console), not to the file.
    assert {h: h.stream for h in lf_root.handlers if type(h) is logging.StreamHandler} == streams
    lf_root.warning("back on the console")
    assert "back on the console" not in log.read_text()
