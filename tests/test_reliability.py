"""Reliability: kills at random points, a flaky API, fuzzed inputs, and secrets that must stay secret.

* Injected API faults (fast): 20% of teacher and ORM calls fail (429 / 500 / timeout / malformed body /
  dropped connection, `FaultPlan`). Every request ends answered or recorded failed with its reason,
  nothing is lost or asked twice once answered, the stage says "rerun ... to retry" and a rerun
  finishes with exactly the outputs of a fault-free run.
* Fuzzed config and data (fast, hypothesis with a fixed seed): wrong types, unknown keys, unset
  `${ENV}` references, YAML that is a list / scalar / not UTF-8, truncated and non-object JSONL
  lines, missing and corrupt images, 10 MB questions, ... Always exit 0 (valid after all, or a
  documented counted skip) or 2 with `error:` / `config error:` lines, never a traceback.
* SIGKILL at seeded random moments of every stage (slow): distill, evolve, reflect and final are
  killed one to three times each and rerun; the outputs equal those of an uninterrupted run (which
  runs with real `llamafactory-cli train` and `ChatModel` on the tiny model). test_evolve.py covers
  evolve's kills mid-generation and mid-training and its shards; test_reflect.py a kill during the
  reflect teacher calls; here the kill points are random, in every stage, against api-backed
  teacher and ORM.
* After that whole pipeline, the API key (given through an env var the config references) appears
  in no file, log or saved config (slow).
"""

from __future__ import annotations

import contextlib
import io
import json
import os
import random
import re
import shutil
import signal
import subprocess
import sys
import time
import zlib
from pathlib import Path
from typing import Any

import pytest
import yaml
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from mathse.cli import main
from mathse.demo.assets import write_demo_dataset
from mathse.run.storage import is_done, iter_jsonl, mark_done
from mathse.testing.openai_server import FakeOpenAIServer, FaultPlan, last_user_text
from tests.conftest import PROJECT_ROOT, write_run_config

KEY_ENV = "MATHSE_RELIABILITY_API_KEY"
KEY = "sk-mathse-reliability-7f3c9e1d5b"  # must never reach the disk
SEED = 20251109  # every random choice in this file derives from it
# Small, fast LLaMA-Factory settings, independent of whatever demo/config.yaml uses today.
TRAIN = {
    "bf16": False,
    "gradient_checkpointing": False,
    "cutoff_len": 256,
    "image_max_pixels": 12544,
    "per_device_train_batch_size": 2,
    "gradient_accumulation_steps": 1,
    "learning_rate": 1.0e-3,
    "max_steps": 4,
    "logging_steps": 1,
    "save_steps": 2,
    "preprocessing_num_workers": 1,
    "extra": {"dataloader_num_workers": 0, "plot_loss": False},
}
# Fields that record time, or where a run lives, rather than what it decided.
VOLATILE = {"gen_seconds", "paths_per_s", "shards", "model", "gen_s", "latency_s", "time"}


# ---------------------------------------------------------------------------------------------
# Scripted services: the replies depend only on the request, so every run is a function of its inputs


def teacher_reply(body: dict[str, Any]) -> str:
    """Distill: a solution reaching the reference answer. Reflect: a reflection and a corrected path."""
    text = last_user_text(body)
    reference = re.search(r"The reference answer is: (.+)", text)
    if reference:
        answer = reference.group(1).strip()
        return f"Step 1: Read the figure.\nStep 2: Work it out.\nThe final answer is \\boxed{{{answer}}}"
    guess = zlib.crc32(text.encode()) % 7
    return (
        "Reflection: The flagged step misread the figure.\n\n"
        f"Corrected solution:\nStep 1: Read the figure again.\nThe final answer is \\boxed{{{guess}}}"
    )


def orm_reply(body: dict[str, Any]) -> str:
    """About half the paths are correct, by a hash of the prompt (question and path)."""
    if zlib.crc32(last_user_text(body).encode()) % 2 == 0:
        return '{"correct": true, "error_step": null, "analysis": "All steps hold."}'
    return '{"correct": false, "error_step": 1, "analysis": "Step 1 misreads the figure."}'


def strip_volatile(node: Any) -> Any:
    if isinstance(node, dict):
        return {k: strip_volatile(v) for k, v in node.items() if k not in VOLATILE}
    if isinstance(node, list):
        return [strip_volatile(v) for v in node]
    return node


def rows(path: Path, key: str | None = None) -> list[dict[str, Any]]:
    """A JSONL file's rows (sorted by `key` when given: journals are in arrival order)."""
    found = [strip_volatile(r) for r in iter_jsonl(path)]
    return sorted(found, key=lambda r: str(r[key])) if key else found


def unique_keys(path: Path, key: str = "key") -> list[str]:
    keys = [str(r[key]) for r in iter_jsonl(path)]
    assert len(keys) == len(set(keys)), f"duplicate keys in {path}"
    return keys


def faults(seed: int) -> FaultPlan:
    """20% of calls fail, every kind; a stalled call outlasts the client's 1.5 s timeout."""
    return FaultPlan(rate=0.2, seed=seed, retry_after_s=0.05, timeout_sleep_s=2.5)


def flaky_endpoint(server: FakeOpenAIServer, model: str, max_retries: int) -> dict[str, Any]:
    return {
        "base_url": server.base_url,
        "model": model,
        "api_key": "${" + KEY_ENV + "}",
        "concurrency": 8,
        "timeout_s": 1.5,
        "max_retries": max_retries,
        "backoff_base_s": 0.01,
        "backoff_max_s": 0.05,
    }


def run_cli(argv: list[str]) -> tuple[int, str, str]:
    """`mathse.cli.main` in-process: exit code, stdout, stderr (an exception fails the test)."""
    out, err = io.StringIO(), io.StringIO()
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        code = main(argv)
    return code, out.getvalue(), err.getvalue()


def rerun_until_done(argv: list[str], attempts: int = 12) -> list[str]:
    """Run until exit 0; every failed attempt must say to rerun. Returns the failure messages."""
    messages = []
    for _ in range(attempts):
        code, _, err = run_cli(argv)
        if code == 0:
            return messages
        assert code == 2, err
        assert "rerun the same command to retry" in err and "Traceback" not in err, err
        messages.append(err.strip())
    raise AssertionError(f"not done after {attempts} runs: {messages[-1]}")


@pytest.fixture(scope="module")
def problems(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    """(seed.jsonl, pool.jsonl): 40 seeds (20 go to the teacher) and 8 pool problems."""
    return write_demo_dataset(tmp_path_factory.mktemp("faults-data"), n_seed=40, n_pool=8, seed=3)


# ---------------------------------------------------------------------------------------------
# Injected API faults


def fake_training(job: Any) -> Path:
    """Stands in for `llamafactory-cli train` where only the API side is under test."""
    mark_done(job.output_dir, {"job": job.name, "fake": True})
    return job.output_dir


def distill_run(tmp_path: Path, tiny_model: Path, problems, teacher: dict[str, Any]) -> tuple[list[str], Path]:
    tmp_path.mkdir(parents=True, exist_ok=True)
    config = write_run_config(tmp_path, tiny_model, *problems, teacher=teacher, llama_factory=TRAIN)
    return ["--stage", "distill", "--config", str(config)], tmp_path / "output"


@pytest.mark.parametrize("max_retries", [0, 2])
def test_distill_with_20_percent_teacher_faults_equals_fault_free_run(
    max_retries: int, tmp_path: Path, tiny_model: Path, problems, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv(KEY_ENV, KEY)
    monkeypatch.setattr("mathse.stages.distill.run_train_job", fake_training)
    seeds = [json.loads(line) for line in problems[0].read_text().splitlines()]
    pending = {s["id"] for s in seeds if not s.get("solution")}

    with FakeOpenAIServer(replies=teacher_reply) as clean:
        argv, reference = distill_run(tmp_path / "clean", tiny_model, problems, flaky_endpoint(clean, "gpt-4o", 0))
        assert run_cli(argv)[0] == 0
    with FakeOpenAIServer(replies=teacher_reply, faults=faults(SEED + max_retries)) as flaky:
        argv, out = distill_run(tmp_path / "flaky", tiny_model, problems, flaky_endpoint(flaky, "gpt-4o", max_retries))
        code, _, err = run_cli(argv)
        if max_retries == 0:  # the fault plan fails some of the first 20 calls: the run must say so
            assert code == 2 and sum(flaky.faults_injected.values()) > 0
        if code != 0:
            assert err.strip().splitlines() == [err.strip()] and "rerun the same command to retry" in err, err
            assert not is_done(out / "distill") and not is_done(out / "sft_model_stage0")
            # answered or recorded failed with a reason, each request exactly once
            kept = [r["id"] for r in iter_jsonl(out / "distill" / "d_sft.jsonl") if r["origin"] == "teacher"]
            dropped = {d["id"]: d["reason"] for d in iter_jsonl(out / "distill" / "dropped.jsonl")}
            failed = {pid for pid, reason in dropped.items() if reason.startswith("teacher call failed: ")}
            assert failed and all(dropped[pid].endswith("retries") for pid in failed)
            assert sorted([*kept, *dropped]) == sorted(pending)  # each request exactly once
            rerun_until_done(argv)
        # every request was answered exactly once: each extra call is an injected fault
        assert flaky.chat_calls == len(pending) + sum(flaky.faults_injected.values())
        usage = json.loads((out / "usage.json").read_text())["stages"]["distill"]["gpt-4o"]
        assert usage["calls"] == flaky.chat_calls and usage["answered"] == len(pending)

    for name in ("d_sft.jsonl", "dropped.jsonl", ".mathse_done.json"):
        assert (out / "distill" / name).read_text() == (reference / "distill" / name).read_text(), name
    assert (out / "data" / "mathse_stage0.json").read_text() == (reference / "data" / "mathse_stage0.json").read_text()


def evolved_output(out: Path, pool: Path) -> int:
    """An output dir as evolve leaves it (D_SFT and two rejected paths per problem); returns the draft count."""
    from mathse.run.records import JudgedPathRow, SftRow, read_problems

    rejected = []
    for p in read_problems(pool):
        for sample in range(2):
            rejected.append(JudgedPathRow(
                id=p.id, question=p.question, images=list(p.images), answer=p.answer, round=1,
                sample=sample, prompt=f"{p.question}\n\nSolve.", verdict_source="orm", orm_raw="{}",
                reasoning=f"Step 1: I count wrongly ({sample}).\nStep 2: So it is 0.\n"
                "The final answer is \\boxed{0}",
                error_step=1, analysis=f"Miscounted the objects ({sample}).",
            ).to_json())
    (out / "evolve").mkdir(parents=True)
    (out / "evolve" / "sft_rejected.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rejected))
    d_sft = SftRow(id="s1", prompt="q?", images=[], answer="1", response="Step 1: 1.", origin="seed").to_json()
    (out / "evolve" / "d_sft.jsonl").write_text(json.dumps(d_sft) + "\n")
    return len(rejected)


REFLECT_OUTPUTS = (
    "orm_reflections/reflection_rows.jsonl",
    "orm_reflections/reflection_dropped.jsonl",
    "reflection_sft.jsonl",
    "data/mathse_reflection_sft.json",
    "reflect/stats.json",
)


def test_reflect_with_20_percent_teacher_and_orm_faults_equals_fault_free_run(
    tmp_path: Path, tiny_model: Path, problems, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv(KEY_ENV, KEY)
    outputs = {}
    for name, plan in (("clean", None), ("flaky", faults(SEED))):
        root = tmp_path / name
        drafts = evolved_output(root / "output", problems[1])
        teacher_plan = None if plan is None else faults(SEED + 1)
        with (
            FakeOpenAIServer(replies=teacher_reply, faults=teacher_plan) as teacher,
            FakeOpenAIServer(replies=orm_reply, faults=plan) as orm,
        ):
            config = write_run_config(
                root, tiny_model, *problems,
                teacher=flaky_endpoint(teacher, "gpt-4o", 0),
                orm={"backend": "api", "policy": "orm", "api": flaky_endpoint(orm, "orm", 0)},
            )
            argv = ["--stage", "reflect", "--config", str(config)]
            messages = rerun_until_done(argv)
            out = root / "output"
            if plan is not None:
                assert messages, "20% faults with no retries must fail some calls in the first run"
                assert any(m.startswith("error: reflect: ") for m in messages)
            # Each draft asked of the teacher until answered, never again after; same for the ORM.
            assert teacher.chat_calls == drafts + sum(teacher.faults_injected.values())
            verdicts = unique_keys(out / "orm_reflections" / "reflect.jsonl")
            assert orm.chat_calls == len(verdicts) + sum(orm.faults_injected.values())
            assert len(unique_keys(out / "reflect" / "teacher.jsonl")) == drafts
            # Failed ORM calls were recorded with their reason and later judged.
            failed = list(iter_jsonl(out / "orm_reflections" / "reflect.failed.jsonl"))
            assert all(f["error"] for f in failed) and {f["key"] for f in failed} <= set(verdicts)
            usage = json.loads((out / "usage.json").read_text())["stages"]["reflect"]
            assert usage["gpt-4o"]["calls"] == teacher.chat_calls and usage["orm"]["calls"] == orm.chat_calls
        outputs[name] = {path: rows(out / path) if path.endswith(".jsonl") else json.loads((out / path).read_text())
                         for path in REFLECT_OUTPUTS}
        outputs[name]["verdicts"] = rows(out / "orm_reflections" / "reflect.jsonl", key="key")
    assert outputs["flaky"] == outputs["clean"]


def test_permanent_teacher_error_is_recorded_not_retried_forever(
    tmp_path: Path, tiny_model: Path, problems, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A deterministic refusal (HTTP 400) is a recorded drop, not a failure that blocks every rerun."""
    from mathse.testing.openai_server import FakeHTTPError

    monkeypatch.setenv(KEY_ENV, KEY)
    monkeypatch.setattr("mathse.stages.distill.run_train_job", fake_training)

    def refuse_dots(body: dict[str, Any]) -> str:
        if "dots" in last_user_text(body):
            raise FakeHTTPError(400, "image rejected by the content filter")
        return teacher_reply(body)

    with FakeOpenAIServer(replies=refuse_dots) as server:
        argv, out = distill_run(tmp_path, tiny_model, problems, flaky_endpoint(server, "gpt-4o", 3))
        code, _, err = run_cli(argv)
        assert code == 0, err
    dropped = list(iter_jsonl(out / "distill" / "dropped.jsonl"))
    assert dropped and all(d["reason"].startswith("teacher call failed: HTTP 400") for d in dropped)


# ---------------------------------------------------------------------------------------------
# Fuzzed config and data: exit 0 or 2 with one-line errors, never a traceback

DEMO_CONFIG = yaml.safe_load((PROJECT_ROOT / "demo" / "config.yaml").read_text())
STAGES = ("distill", "evolve", "reflect", "final", "orm")
UNSET_ENV = "MATHSE_FUZZ_SURELY_UNSET"


def _key_paths(node: Any, prefix: str = "") -> list[str]:
    if not isinstance(node, dict):
        return [prefix]
    found = [prefix] if prefix else []
    for key, value in node.items():
        found += _key_paths(value, f"{prefix}.{key}" if prefix else str(key))
    return found


KEY_PATHS = sorted({*_key_paths(DEMO_CONFIG), "orm.api", "orm.api.base_url", "orm.local", "reflect.final_recipe",
                    "teacher.api_key", "pricing.gpt-4o.prompt_per_1m", "eval.benchmarks", "llama_factory.deepspeed"})
HUGE = "x" * 200_000
ODD_STRINGS = ("${" + UNSET_ENV + "}", "${" + UNSET_ENV + ":-}", "a\x00b", HUGE, "/", "~", "../nope", "🙂", "\t", "")
VALUES = st.one_of(
    st.none(),
    st.booleans(),
    st.integers(min_value=-(10**30), max_value=10**30),
    st.floats(allow_nan=True, allow_infinity=True),
    st.text(max_size=20),
    st.sampled_from(ODD_STRINGS),
    st.lists(st.integers(), max_size=3),
    st.dictionaries(st.text(max_size=6), st.integers(), max_size=2),
)
MUTATION = st.one_of(
    st.tuples(st.just("set"), st.sampled_from(KEY_PATHS), VALUES),
    st.tuples(st.just("unknown"), st.sampled_from(["", *DEMO_CONFIG]), st.text(min_size=1, max_size=10), VALUES),
    st.tuples(st.just("delete"), st.sampled_from(KEY_PATHS), st.none()),
)


def _mutate(cfg: dict[str, Any], mutation: tuple[Any, ...]) -> None:
    kind, where, *rest = mutation
    if kind == "unknown":
        node = cfg if not where else cfg.get(where)
        if isinstance(node, dict):
            node[rest[0]] = rest[1]
        return
    parts = where.split(".")
    node: Any = cfg
    for part in parts[:-1]:
        if not isinstance(node, dict):
            return
        node = node.setdefault(part, {})
    if not isinstance(node, dict):
        return
    if kind == "set":
        node[parts[-1]] = rest[0]
    else:
        node.pop(parts[-1], None)


def _raw_variants(text: bytes) -> st.SearchStrategy[bytes]:
    return st.one_of(
        st.integers(min_value=0, max_value=len(text)).map(lambda n: text[:n]),  # truncated
        st.tuples(st.integers(min_value=0, max_value=len(text)), st.binary(min_size=1, max_size=8)).map(
            lambda t: text[: t[0]] + t[1] + text[t[0]:]
        ),  # garbage (often not UTF-8) spliced in
        st.sampled_from([b"", b"- a\n- b\n", b"just a scalar\n", b"42\n", b"\xff\xfe\x00", b"a: &a [*a]\n", b"{"]),
    )


@pytest.fixture(scope="module")
def fuzz_root(tmp_path_factory: pytest.TempPathFactory, tiny_model: Path) -> dict[str, Any]:
    """A valid run config (as a dict) over real files, and a garbage PNG for data mutations."""
    root = tmp_path_factory.mktemp("fuzz")
    seed, pool = write_demo_dataset(root / "data", n_seed=4, n_pool=4, seed=5)
    config = write_run_config(root, tiny_model, seed, pool, llama_factory=TRAIN)
    garbage = root / "data" / "images" / "garbage.png"
    garbage.write_bytes(b"\x89PNG\r\n\x1a\n" + random.Random(SEED).randbytes(400))
    labelled = root / "data" / "labelled.jsonl"
    first = json.loads(seed.read_text().splitlines()[0])
    row = {k: first[k] for k in ("id", "question", "images", "answer")}
    labelled.write_text(json.dumps({**row, "path": "Step 1: x.\nStep 2: y.", "correct": False, "error_step": 2,
                                    "analysis": "Step 2 is wrong."}) + "\n")
    return {"root": root, "config": yaml.safe_load(config.read_text()), "seed": seed, "pool": pool,
            "labelled": labelled, "garbage": garbage}


def assert_clean_exit(code: int, err: str) -> None:
    assert "Traceback" not in err, err[-2000:]
    assert code in (0, 2), (code, err[-2000:])
    if code == 2:
        lines = err.strip().splitlines()
        assert lines, "exit 2 without saying why"
        assert all(line.startswith(("config error:", "error:")) for line in lines), err[-2000:]
        assert all(len(line) < 2000 for line in lines), "an error line echoes a huge value"


FUZZ = settings(
    max_examples=120, derandomize=True, deadline=None, database=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow, HealthCheck.data_too_large],
)


@FUZZ
@given(data=st.data())
def test_fuzzed_config_exits_cleanly(fuzz_root: dict[str, Any], data: st.DataObject) -> None:
    os.environ.pop(UNSET_ENV, None)
    cfg = json.loads(json.dumps(fuzz_root["config"]))
    if data.draw(st.booleans()):
        for mutation in data.draw(st.lists(MUTATION, min_size=1, max_size=4)):
            _mutate(cfg, mutation)
        raw = yaml.safe_dump(cfg, allow_unicode=True).encode()
    else:
        raw = data.draw(_raw_variants(yaml.safe_dump(cfg).encode()))
    path = fuzz_root["root"] / "fuzzed.yaml"
    path.write_bytes(raw)
    stage = data.draw(st.sampled_from(STAGES))
    assert_clean_exit(*run_cli(["--stage", stage, "--config", str(path), "--dry-run"])[::2])


TEN_MB = "What is the value? " * 550_000  # ~10 MB question
FIELD_VALUES = st.one_of(
    VALUES,
    st.sampled_from([TEN_MB, ["missing.png"], ["images/garbage.png"], ["images"], ["a\x00b.png"], {"a": 1}]),
)


def _data_variants(lines: list[bytes]) -> st.SearchStrategy[bytes]:
    text = b"".join(lines)

    def set_field(args: tuple[int, str, Any]) -> bytes:
        i, field, value = args
        obj = json.loads(lines[i])
        obj[field] = value
        return b"".join([*lines[:i], json.dumps(obj, allow_nan=True).encode() + b"\n", *lines[i + 1:]])

    def drop_field(args: tuple[int, str]) -> bytes:
        i, field = args
        obj = json.loads(lines[i])
        obj.pop(field, None)
        return b"".join([*lines[:i], json.dumps(obj).encode() + b"\n", *lines[i + 1:]])

    index = st.integers(min_value=0, max_value=len(lines) - 1)
    fields = st.sampled_from(["id", "question", "images", "answer", "solution", "path", "correct", "error_step"])
    return st.one_of(
        st.tuples(index, fields, FIELD_VALUES).map(set_field),
        st.tuples(index, fields).map(drop_field),
        st.tuples(index, st.sampled_from([b"[1, 2]", b"3", b'"s"', b"null", b"{}", b"{", b"\xff\xfe"])).map(
            lambda t: b"".join([*lines[: t[0]], t[1] + b"\n", *lines[t[0] + 1:]])
        ),  # a line that is not a problem object
        st.integers(min_value=0, max_value=len(text)).map(lambda n: text[:n]),  # truncated file
        st.tuples(st.integers(min_value=0, max_value=len(text)), st.binary(min_size=1, max_size=8)).map(
            lambda t: text[: t[0]] + t[1] + text[t[0]:]
        ),
        st.sampled_from([b"", b"\n \n", b"\xef\xbb\xbf" + text, text + lines[0], b"[" * 50_000 + b"]" * 50_000]),
    )


@FUZZ
@given(data=st.data())
def test_fuzzed_problem_files_exit_cleanly(fuzz_root: dict[str, Any], data: st.DataObject) -> None:
    stage, key, source = data.draw(st.sampled_from([
        ("distill", "data.seed_file", fuzz_root["seed"]),
        ("evolve", "data.pool_file", fuzz_root["pool"]),
        ("orm", "orm.train_file", fuzz_root["labelled"]),
    ]))
    lines = source.read_bytes().splitlines(keepends=True)
    fuzzed = source.parent / f"fuzzed-{stage}.jsonl"  # next to images/, so relative image paths resolve
    fuzzed.write_bytes(data.draw(_data_variants(lines)))
    code, _, err = run_cli(
        ["--stage", stage, "--config", str(fuzz_root["root"] / "config.yaml"), "--dry-run", "--set", f"{key}={fuzzed}"]
    )
    assert_clean_exit(code, err)


def _cli(*args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "main.py", *args], cwd=PROJECT_ROOT, capture_output=True, text=True, timeout=120,
        env={**os.environ, **(env or {})},
    )


def test_bad_inputs_through_main_py_exit_2_with_one_clear_line(fuzz_root: dict[str, Any], tmp_path: Path) -> None:
    """The common bad inputs, as a user meets them: `python main.py`, exit 2, one line, no traceback."""
    config = fuzz_root["root"] / "config.yaml"
    seed_lines = fuzz_root["seed"].read_bytes().splitlines(keepends=True)
    first = json.loads(seed_lines[0])

    def data_file(name: str, content: bytes) -> str:
        path = fuzz_root["seed"].parent / name
        path.write_bytes(content)
        return f"data.seed_file={path}"

    def config_file(content: bytes) -> Path:
        path = tmp_path / f"config-{len(list(tmp_path.iterdir()))}.yaml"
        path.write_bytes(content)
        return path

    valid = config.read_bytes()
    cases = {
        "config not UTF-8": (config_file(valid + b"\nrun: {seed: \xff}\n"), [], "not UTF-8"),
        "config is a list": (config_file(b"- distill\n- evolve\n"), [], "top level must be a mapping"),
        "config is a scalar": (config_file(b"distill\n"), [], "top level must be a mapping"),
        "unset env ref": (config, ["--set", "teacher.api_key=${NOPE_UNSET}"],
                          "environment variable NOPE_UNSET is not set"),
        "duplicate key": (config_file(valid + b"\nrun: {seed: 1}\n"), [], "duplicate key 'run'"),
        "unknown key": (config, ["--set", "evolve.roundz=2"], "unknown key (did you mean 'rounds'?)"),
        "wrong type": (config, ["--set", "evolve.rounds=many"], "evolve.rounds: Input should be a valid integer"),
        "truncated JSONL": (config, ["--set", data_file("trunc.jsonl", b"".join(seed_lines)[:-20])], "invalid JSON"),
        "non-object line": (config, ["--set", data_file("list.jsonl", seed_lines[0] + b"[1, 2]\n")],
                            "expected a JSON object, got list"),
        "empty file": (config, ["--set", data_file("empty.jsonl", b"")], "no problems in file"),
        "not UTF-8 data": (config, ["--set", data_file("latin1.jsonl", seed_lines[0] + b'{"id": "\xe9"}\n')],
                           "not UTF-8 text"),
        "missing image": (config, ["--set", data_file("missing.jsonl", json.dumps(
            {**first, "images": ["images/nope.png"]}).encode() + b"\n")], "image not found"),
        "corrupt image": (config, ["--set", data_file("corrupt.jsonl", json.dumps(
            {**first, "images": ["images/garbage.png"]}).encode() + b"\n")], "image unreadable"),
    }
    for name, (cfg, extra, expected) in cases.items():
        proc = _cli("--stage", "distill", "--config", str(cfg), "--dry-run", *extra)
        lines = proc.stderr.strip().splitlines()
        assert proc.returncode == 2 and len(lines) == 1 and expected in lines[0], (name, proc.stderr[-1500:])
        assert "Traceback" not in proc.stderr, name


# ---------------------------------------------------------------------------------------------
# Training resume (what the SIGKILL tests below exercise end to end, without a trainer)


@pytest.mark.parametrize("kind", ["full", "lora", "finished"])
def test_interrupted_training_resumes_from_the_checkpoint_weights(kind: str, tmp_path: Path, monkeypatch) -> None:
    """A full checkpoint's weights are loaded through from_pretrained (the Trainer's own resume drops them
    for Qwen2-VL); LoRA resumes as is; a run that finished before its marker is not trained again."""
    from types import SimpleNamespace

    from mathse.model import training as bridge

    out = tmp_path / "model"
    for step in (2, 10):
        ckpt = out / f"checkpoint-{step}"
        ckpt.mkdir(parents=True)
        (ckpt / "trainer_state.json").write_text("{}")
        (ckpt / ("adapter_config.json" if kind == "lora" else "model.safetensors")).write_text("{}")
    (out / "checkpoint-12").mkdir()  # cut short by the kill: no trainer_state.json, so it goes
    if kind == "finished":
        (out / "model.safetensors").write_text("{}")
        (out / "trainer_state.json").write_text("{}")
    launched: list[list[str]] = []
    ckpt = out / "checkpoint-10"
    at_launch: list[dict[str, str]] = []  # checkpoint-10's files when training starts (pruned after)

    def popen(cmd: list[str], **kwargs: Any) -> Any:
        launched.append(cmd)
        at_launch.append({p.name: p.read_text() for p in ckpt.iterdir()})
        return SimpleNamespace(stdout=iter(()), wait=lambda: 0)

    monkeypatch.setattr(bridge.subprocess, "Popen", popen)
    # The start model's processor files; checkpoint-10 lacks them (LLaMA-Factory's on_save callback
    # writes them after trainer_state.json, so a kill can fall in between).
    base = tmp_path / "base"
    base.mkdir()
    for name, text in {"preprocessor_config.json": "{}", "tokenizer.json": "{}", "config.json": "{base}",
                       "tokenizer_config.json": "{tok}", "model.safetensors": "base weights",
                       "trainer_state.json": "{base state}"}.items():
        (base / name).write_text(text)
    (ckpt / "config.json").write_text("{ckpt}")
    (ckpt / "tokenizer_config.json").write_text("")  # cut short by the kill
    args = {"model_name_or_path": str(base), "output_dir": str(out)}
    bridge.run_train_job(bridge.TrainJob(name="train", args=args, run_dir=tmp_path / "run"))
    assert is_done(out)
    if kind == "finished":
        assert not launched
        return
    assert len(launched) == 1 and not (out / "checkpoint-12").exists()
    sent = yaml.safe_load((tmp_path / "run" / "train.yaml").read_text())
    expected = str(ckpt) if kind == "full" else str(base)
    assert sent["model_name_or_path"] == expected
    if kind == "full":  # the resumed-from checkpoint loads: processor files filled in, its own config/weights kept
        files = at_launch[0]
        assert "preprocessor_config.json" in files and "tokenizer.json" in files
        assert files["tokenizer_config.json"] == "{tok}"
        assert files["config.json"] == "{ckpt}" and files["model.safetensors"] == "{}"
        assert files["trainer_state.json"] == "{}"  # the checkpoint's own state, never the start model's


@pytest.mark.parametrize("weights", [True, False])
def test_last_step_checkpoint_is_the_result_only_when_it_holds_weights(weights: bool, tmp_path: Path,
                                                                        monkeypatch) -> None:
    """Killed after the checkpoint of the last step: with weights it becomes the output (no launch, no
    resume-only files); with optimizer shards only (DeepSpeed ZeRO-3) the training resumes instead."""
    from types import SimpleNamespace

    from mathse.model import training as bridge

    out = tmp_path / "model"
    ckpt = out / "checkpoint-4"
    (ckpt / "global_step4").mkdir(parents=True)
    (ckpt / "trainer_state.json").write_text(json.dumps({"global_step": 4, "max_steps": 4}))
    for name in ("optimizer.pt", "rng_state.pth", "config.json") + (("model.safetensors",) if weights else ()):
        (ckpt / name).write_text(name)
    launched: list[list[str]] = []

    def popen(cmd: list[str], **kwargs: Any) -> Any:
        launched.append(cmd)
        return SimpleNamespace(stdout=iter(()), wait=lambda: 0)

    monkeypatch.setattr(bridge.subprocess, "Popen", popen)
    args = {"model_name_or_path": str(tmp_path / "base"), "output_dir": str(out)}
    bridge.run_train_job(bridge.TrainJob(name="train", args=args, run_dir=tmp_path / "run"))
    assert is_done(out)
    if weights:
        assert not launched
        assert sorted(p.name for p in out.iterdir() if p.is_file() and p.name != ".mathse_done.json") == [
            "config.json", "model.safetensors", "trainer_state.json"]
    else:
        assert len(launched) == 1 and not (out / "model.safetensors").exists()


# ---------------------------------------------------------------------------------------------
# SIGKILL at random points of every stage, then rerun == uninterrupted; no secret on disk


def pipeline_sections(teacher: FakeOpenAIServer, orm: FakeOpenAIServer) -> dict[str, Any]:
    key = "${" + KEY_ENV + "}"
    return {
        "teacher": {"base_url": teacher.base_url, "model": "gpt-4o", "api_key": key, "concurrency": 1,
                    "max_retries": 2, "timeout_s": 30},
        "orm": {"backend": "api", "policy": "orm",
                "api": {"base_url": orm.base_url, "model": "orm", "api_key": key, "concurrency": 2, "max_retries": 2}},
        "inference": {"temperature": 0, "n_paths": 2, "max_new_tokens": 16, "concurrency": 4},
        "evolve": {"rounds": 2, "batch_size": 6, "retrain": False},
        "llama_factory": TRAIN,
        "pricing": {"gpt-4o": {"prompt_per_1m": 2.5, "completion_per_1m": 10.0}},
    }


class Pipeline:
    """The reference run (uninterrupted), its per-stage snapshots and timings, and the shared servers."""

    def __init__(self, root: Path, model: Path, data: tuple[Path, Path], teacher: FakeOpenAIServer,
                 orm: FakeOpenAIServer) -> None:
        self.root, self.model, self.data, self.teacher, self.orm = root, model, data, teacher, orm
        self.seconds: dict[str, float] = {}
        self.calls: dict[str, tuple[int, int]] = {}  # (teacher, orm) calls a stage made uninterrupted
        self.logs = root / "logs"
        self.logs.mkdir(parents=True, exist_ok=True)

    def config(self, name: str) -> Path:
        (self.root / name).mkdir(parents=True, exist_ok=True)
        return write_run_config(self.root / name, self.model, *self.data, **pipeline_sections(self.teacher, self.orm))

    def start(self, config: Path, stage: str) -> subprocess.Popen[bytes]:
        log = (self.logs / f"{config.parent.name}-{stage}.log").open("ab")
        env = {**os.environ, KEY_ENV: KEY, "MAX_CONCURRENT": "1"}
        return subprocess.Popen([sys.executable, "main.py", "--stage", stage, "--config", str(config)],
                                cwd=PROJECT_ROOT, stdout=log, stderr=subprocess.STDOUT, env=env)

    def run(self, config: Path, stage: str) -> float:
        start = time.monotonic()
        proc = self.start(config, stage)
        assert proc.wait(timeout=600) == 0, (self.logs / f"{config.parent.name}-{stage}.log").read_text()[-3000:]
        return time.monotonic() - start

    def run_with_kills(self, config: Path, stage: str, kills: int, at_checkpoint: Path | None = None) -> int:
        """Start `stage` and SIGKILL it `kills` times at seeded random moments (plus once as soon as a
        training checkpoint is complete in `at_checkpoint`, the resume-from-checkpoint path), then
        run it to the end. Returns how many kills landed before the run finished by itself."""
        rng = random.Random(f"{SEED}:{stage}")
        points: list[float | Path] = [rng.uniform(0.2, 0.9) * self.seconds[stage] for _ in range(kills)]
        points += [at_checkpoint] if at_checkpoint is not None else []
        killed = 0
        for point in points:
            proc = self.start(config, stage)
            if isinstance(point, Path):
                deadline = time.monotonic() + 300
                while proc.poll() is None and not any(point.glob("checkpoint-*/trainer_state.json")):
                    assert time.monotonic() < deadline, f"{stage}: no checkpoint in {point}"
                    time.sleep(0.02)
            else:
                with contextlib.suppress(subprocess.TimeoutExpired):
                    proc.wait(timeout=point)
            if proc.poll() is None:
                proc.send_signal(signal.SIGKILL)
                proc.wait()
                killed += 1
                time.sleep(0.3)  # the trainer child dies with its parent (PR_SET_PDEATHSIG)
            else:
                assert proc.returncode == 0, f"{stage} failed before its kill point"
        self.run(config, stage)
        return killed

    def calls_now(self) -> tuple[int, int]:
        return self.teacher.chat_calls, self.orm.chat_calls


def copy_run(src: Path, dst: Path) -> None:
    shutil.copytree(src / "output", dst / "output", symlinks=True)


@pytest.fixture(scope="module")
def pipeline(tmp_path_factory: pytest.TempPathFactory, tiny_model: Path):
    """Uninterrupted distill -> evolve -> reflect (api teacher and ORM), snapshotted after each stage."""
    root = tmp_path_factory.mktemp("reliability")
    seed, pool = write_demo_dataset(root / "data", n_seed=8, n_pool=8, seed=7)
    # One pool image is corrupt: evolve must count it as skipped, round after round, and go on.
    first_pool = json.loads(pool.read_text().splitlines()[0])
    (root / "data" / first_pool["images"][0]).write_bytes(b"\x89PNG\r\n\x1a\n not an image")
    with (
        FakeOpenAIServer(replies=teacher_reply, latency_s=0.3) as teacher,
        FakeOpenAIServer(replies=orm_reply, latency_s=0.1) as orm,
    ):
        run = Pipeline(root, tiny_model, (seed, pool), teacher, orm)
        config = run.config("reference")
        for stage in ("distill", "evolve", "reflect"):
            before = run.calls_now()
            run.seconds[stage] = run.run(config, stage)
            run.calls[stage] = (teacher.chat_calls - before[0], orm.chat_calls - before[1])
            if stage != "reflect":
                copy_run(root / "reference", root / f"after-{stage}")
        yield run


def distill_outputs(out: Path) -> dict[str, Any]:
    found = {name: rows(out / "distill" / name) for name in ("d_sft.jsonl", "dropped.jsonl")}
    found["marker"] = json.loads((out / "distill" / ".mathse_done.json").read_text())
    found["dataset"] = json.loads((out / "data" / "mathse_stage0.json").read_text())
    found["M0 done"] = is_done(out / "sft_model_stage0")
    state = json.loads((out / "sft_model_stage0" / "trainer_state.json").read_text())
    found["M0 steps"] = state["global_step"]
    found["M0 files"] = sorted(p.name for p in (out / "sft_model_stage0").iterdir() if p.is_file())
    return found


def evolve_outputs(out: Path) -> dict[str, Any]:
    ev = out / "evolve"
    found: dict[str, Any] = {name: rows(ev / f"{name}.jsonl")
                             for name in ("sft_chosen", "sft_rejected", "hard_problems", "history", "d_sft")}
    for rd in sorted(ev.glob("round_*")):
        found[rd.name] = {name: json.loads((rd / name).read_text()) for name in ("batch.json", "remain.json")}
        found[rd.name]["stats"] = strip_volatile(json.loads((rd / "stats.json").read_text()))
        found[rd.name]["generations"] = rows(rd / "generations.shard-0-of-1.jsonl", key="key")
        found[rd.name]["done"] = is_done(rd)
    for journal in sorted((out / "orm_reflections").glob("evolve_round_*.jsonl")):
        if not journal.name.endswith(".failed.jsonl"):
            found[journal.name] = rows(journal, key="key")
    found["dataset"] = json.loads((out / "data" / "mathse_stage_final.json").read_text())
    return found


def reflect_outputs(out: Path) -> dict[str, Any]:
    found: dict[str, Any] = {path: rows(out / path) if path.endswith(".jsonl") else json.loads((out / path).read_text())
                             for path in REFLECT_OUTPUTS}
    found["teacher"] = rows(out / "reflect" / "teacher.jsonl", key="key")
    found["verdicts"] = rows(out / "orm_reflections" / "reflect.jsonl", key="key")
    found["done"] = is_done(out / "reflect")
    return found


@pytest.mark.slow
def test_reference_run_counts_the_corrupt_pool_image_as_skipped(pipeline: Pipeline) -> None:
    out = pipeline.root / "reference" / "output"
    rounds = sorted((out / "evolve").glob("round_*"))
    assert rounds and all(is_done(rd) for rd in rounds)
    skipped = [r for rd in rounds for r in iter_jsonl(rd / "generations.shard-0-of-1.jsonl") if r.get("error")]
    assert skipped and all("image unreadable" in r["error"] for r in skipped)
    no_output = sum(json.loads((rd / "stats.json").read_text())["no_output"] for rd in rounds)
    assert no_output == len(skipped)
    assert reflect_outputs(out)["done"] and reflect_outputs(out)["reflect/stats.json"]["sent"] > 0


@pytest.mark.slow
def test_sigkill_at_random_points_of_every_stage_then_rerun_equals_uninterrupted(pipeline: Pipeline) -> None:
    ref = pipeline.root / "reference" / "output"
    checks = {"distill": distill_outputs, "evolve": evolve_outputs, "reflect": reflect_outputs}
    # (stage, run dir: a copy of the reference just before the stage, kills)
    plan = [("distill", None, 1), ("evolve", "after-distill", 2), ("reflect", "after-evolve", 2)]
    for stage, start_from, kills in plan:
        name = f"killed-{stage}"
        if start_from is not None:
            copy_run(pipeline.root / start_from, pipeline.root / name)
        config = pipeline.config(name)
        before = pipeline.calls_now()
        out = pipeline.root / name / "output"
        checkpoint = out / "sft_model_stage0" if stage == "distill" else None
        killed = pipeline.run_with_kills(config, stage, kills, at_checkpoint=checkpoint)
        assert checks[stage](out) == checks[stage](ref), f"{stage} after {killed} kills differs from the reference"
        if stage == "distill":
            assert_same_weights(out / "sft_model_stage0", ref / "sft_model_stage0")
        # A kill may lose the calls in flight (at most `concurrency` per service); nothing else is asked twice.
        made = [now - then for now, then in zip(pipeline.calls_now(), before, strict=True)]
        budget = [ref_calls + killed * 2 for ref_calls in pipeline.calls[stage]]
        assert made[0] <= budget[0] and made[1] <= budget[1], (stage, made, pipeline.calls[stage], killed)

    # final: uninterrupted on the reference, then killed at a random point of as long a run on the killed
    # reflect's output (the same data: compared above), rerun; the two models must be identical.
    pipeline.seconds["final"] = pipeline.run(pipeline.config("reference"), "final")
    final = pipeline.root / "killed-reflect" / "output" / "reflection_model_final"
    assert pipeline.run_with_kills(pipeline.config("killed-reflect"), "final", 1, at_checkpoint=final) >= 1
    assert is_done(final)
    assert json.loads((final / "trainer_state.json").read_text())["global_step"] == TRAIN["max_steps"]
    assert_same_weights(final, ref / "reflection_model_final")


def assert_same_weights(model: Path, reference: Path) -> None:
    """Bit-identical weights: a resumed training run must end exactly where an uninterrupted one does."""
    from safetensors.torch import load_file

    got, want = load_file(model / "model.safetensors"), load_file(reference / "model.safetensors")
    assert got.keys() == want.keys()
    differ = [name for name in want if not got[name].equal(want[name])]
    assert not differ, f"{model}: {len(differ)} of {len(want)} tensors differ from {reference}, e.g. {differ[:3]}"


@pytest.mark.slow
def test_api_key_reaches_no_file_log_or_saved_config(pipeline: Pipeline) -> None:
    """After distill, evolve, reflect and final with the key in the environment (api teacher and ORM)."""
    reference = pipeline.root / "reference"
    if not is_done(reference / "output" / "reflection_model_final"):  # the kill test did not run final
        pipeline.run(pipeline.config("reference"), "final")
    scanned = 0
    for path in pipeline.root.rglob("*"):  # every run dir (reference, snapshots, killed runs) and every log
        if path.is_file() and not path.is_symlink():
            assert KEY.encode() not in path.read_bytes(), path
            scanned += 1
    assert scanned > 50
    # The key really was in the config: each stage's saved config shows it masked.
    saved = sorted((reference / "output").glob("*/config.yaml"))
    assert {p.parent.name for p in saved} >= {"distill", "evolve", "reflect", "final"}
    for path in saved:
        cfg = yaml.safe_load(path.read_text())
        assert cfg["teacher"]["api_key"] == "***" and cfg["orm"]["api"]["api_key"] == "***", path
