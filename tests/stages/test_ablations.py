"""`--stage ablations`: variants of a finished run in their own folders, reusing what they do not change.

Fast tests: the variants' config (presets, did-you-mean naming the variant, keys a variant may not
set), the stages each preset runs, the table's statistics. The slow test runs a real tiny run
(distill -> evolve -> reflect -> final -> eval), then the ablations in a subprocess killed once a
finished variant is behind it and the teacher-feedback variant's reflections are in, then again:
the variant whose overrides change nothing upstream of eval and `no_reflection` train nothing, call
nothing and read the run's evaluations; `teacher_feedback` asks the teacher once per draft (no call
repeated across the kill), without the ORM's diagnosis, and trains the final model once; the run's
own files are untouched.
"""

from __future__ import annotations

import hashlib
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import pytest
import yaml

from mathse.cli import main
from mathse.reporting.ablations import compare, render
from mathse.run.config import AblationVariant
from mathse.run.config_loading import load_config
from mathse.run.errors import ConfigError
from mathse.run.storage import MARKER_NAME, Journal, read_json, read_marker
from mathse.stages import ablations
from mathse.testing.openai_server import FakeOpenAIServer, last_user_text
from tests.conftest import PROJECT_ROOT, write_run_config


def with_variants(config: Path, variants: list[dict[str, Any]]) -> Path:
    raw = yaml.safe_load(config.read_text())
    raw["ablations"] = variants
    config.write_text(yaml.safe_dump(raw, sort_keys=False))
    return config


def test_variant_keys_are_checked_at_load_with_did_you_mean(run_config) -> None:
    config = with_variants(run_config(), [{"preset": "teacher_feedback"},
                                          {"name": "lr", "overrides": {"llama_factory.learning_rat": 1e-4}},
                                          {"name": "out", "overrides": {"run.output_dir": "elsewhere"}}])
    with pytest.raises(ConfigError) as exc:
        load_config(config)
    assert exc.value.lines == [
        "config error: ablations[1].overrides: llama_factory.learning_rat: unknown key (did you mean 'learning_rate'?)",
        "config error: ablations[2].overrides: run.output_dir: set by the ablations stage, not by a variant",
    ]
    with pytest.raises(ConfigError, match="given more than once"):
        load_config(with_variants(config, [{"preset": "binary_orm"}, {"name": "binary_orm"}]))
    with pytest.raises(ConfigError, match="needs a name"):
        load_config(with_variants(config, [{"overrides": {"evolve.rounds": 1}}]))


def test_presets_resolve_to_overrides_and_the_stages_they_run(run_config) -> None:
    cfg = load_config(with_variants(run_config(), [{"preset": p} for p in
                                                   ("no_reflection", "teacher_feedback", "binary_orm", "rule_judge")]))
    found = {v.name: (vcfg, until) for v, vcfg, until in ablations.variants(cfg)}
    assert {n: ablations.stages(vcfg, until) for n, (vcfg, until) in found.items()} == {
        "no_reflection": ["distill", "evolve"],  # the test config judges by rule: no orm stage
        "teacher_feedback": ["distill", "evolve", "reflect", "final"],
        "binary_orm": ["distill"],
        "rule_judge": ["distill", "evolve", "reflect", "final"],
    }
    vcfg = found["teacher_feedback"][0]
    assert vcfg.reflect.feedback == "teacher" and vcfg.output_dir == cfg.output_dir / "ablations" / "teacher_feedback"
    assert found["binary_orm"][0].orm.targets == "binary"
    own = AblationVariant(preset="rule_judge", name="rule_lr", overrides={"llama_factory.learning_rate": 1e-4})
    assert own.resolved() == ({"orm.backend": "rule", "orm.policy": "rule", "llama_factory.learning_rate": 1e-4},
                              "final")


def test_table_has_wilson_intervals_and_mcnemar_against_the_run() -> None:
    main_items = {f"q{i}": i < 30 for i in range(40)}  # 30/40
    variant_items = {f"q{i}": i < 20 or i >= 38 for i in range(40)}  # 22/40: 10 lost, 2 gained
    results = compare(
        {"name": "main", "preset": None, "model": "final", "eval": {"b": main_items}, "orm": None},
        [{"name": "no_reflection", "preset": "no_reflection", "model": "stage2", "eval": {"b": variant_items},
          "orm": None, "performed": {"teacher_calls": 0, "trainings": 0}}],
    )
    cell = results["variants"][0]["benchmarks"]["b"]
    assert (cell["correct"], cell["total"], cell["accuracy"]) == (22, 40, 55.0)
    assert cell["interval"] == [39.83, 69.29]  # Wilson 95%: 0.55 -+ 0.147 about 0.546
    assert cell["vs_main"] == {"items": 40, "only_main": 10, "only_variant": 2, "p_value": 0.038574}
    assert results["main"]["paper"] == {"accuracy": 64.7, "orm_accuracy": 97.1}
    assert results["variants"][0]["paper"] == {"accuracy": 62.35}
    row = next(line for line in render(results) if line.startswith("| no_reflection"))
    assert "55.00 (22/40; 39.8–69.3); vs main +2/−10, p=0.0386" in row and row.endswith("| 62.35 | 0 | 0 |")


# ---------------------------------------------------------------------------------------------
# End to end on the tiny model


def teacher_reply(body: dict[str, Any]) -> str:
    # Without the ORM's diagnosis the teacher corrects the path another way (the same corrected paths
    # would make the same dataset, and the final model would rightly be reused: same fingerprint).
    step = "Find the error myself." if "Find the first wrong step yourself" in last_user_text(body) else "Read it."
    return ("Reflection: The first step misreads the figure.\n\n"
            f"Corrected solution:\nStep 1: {step}\nThe final answer is \\boxed{{1}}")


VARIANTS = [{"name": "same", "overrides": {"inference.concurrency": 2}}, {"preset": "no_reflection"},
            {"preset": "teacher_feedback"}]


@pytest.fixture(scope="module")
def finished_run(tmp_path_factory, tiny_model, demo_data):
    """(config, teacher) of a finished tiny run: M0, one round without retraining, reflections, final, eval."""
    root = tmp_path_factory.mktemp("run")
    with FakeOpenAIServer(replies=teacher_reply) as teacher:
        config = write_run_config(
            root, tiny_model, *demo_data,
            teacher={"base_url": teacher.base_url, "model": "teacher", "filter_by_answer": False, "max_retries": 1},
            llama_factory={"max_steps": 3, "save_steps": 100},
            inference={"temperature": 0, "n_paths": 1, "max_new_tokens": 12, "concurrency": 4},
            evolve={"rounds": 1, "batch_size": 4, "retrain": False},
            reflect={"revalidate": False},
            eval={"benchmarks": [{"name": "bench", "format": "jsonl", "path": str(demo_data[1]), "limit": 4}],
                  "checkpoints": ["stage2", "final"], "max_new_tokens": 12},
        )
        assert main(["--stage", "all", "--config", str(config)]) == 0
        yield with_variants(config, VARIANTS), teacher


def tree_digest(out: Path) -> dict[str, str]:
    """sha256 of every file of the run outside ablations/ and report/ (which the stage rewrites)."""
    return {str(p.relative_to(out)): hashlib.sha256(p.read_bytes()).hexdigest() for p in sorted(out.rglob("*"))
            if p.is_file() and p.relative_to(out).parts[0] not in ("ablations", "report")}


@pytest.mark.slow
def test_variants_reuse_the_run_and_a_killed_run_resumes_without_repeating_work(finished_run, capsys) -> None:
    config, teacher = finished_run
    out = config.parent / "output"
    before = tree_digest(out)
    drafts = read_marker(out / "reflect")["sent"]
    asked = teacher.chat_calls

    assert main(["--stage", "ablations", "--config", str(config), "--dry-run"]) == 0
    plan = capsys.readouterr().out
    assert "[dry-run]   final: reused from the run (finished, inputs unchanged)" in plan  # `same`
    assert "[dry-run]   reflect: computes (stale: reflection data: reflect.feedback: null -> 'teacher'" in plan
    assert "[dry-run]   final: computes (stale once reflect is redone" in plan
    assert not (out / "ablations").exists()  # a dry run writes nothing

    # Killed once `same` is finished and the teacher_feedback variant's reflections are in.
    log = config.parent / "killed.log"
    proc = subprocess.Popen([sys.executable, "main.py", "--stage", "ablations", "--config", str(config)],
                            cwd=PROJECT_ROOT, stdout=log.open("w"), stderr=subprocess.STDOUT)
    reflected = out / "ablations" / "teacher_feedback" / "reflect" / MARKER_NAME
    seeded = (out / "reflect" / MARKER_NAME).read_bytes()  # the variant starts with the run's marker

    def redone() -> bool:
        try:
            return reflected.read_bytes() != seeded
        except FileNotFoundError:
            return False

    deadline = time.monotonic() + 400
    while not redone() and proc.poll() is None and time.monotonic() < deadline:
        time.sleep(0.05)
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait()
    assert redone(), f"the kill point was never reached: {log.read_text()[-3000:]}"
    assert not (out / "ablations" / "teacher_feedback" / MARKER_NAME).exists()
    same_marker = (out / "ablations" / "same" / MARKER_NAME).read_bytes()
    paid = teacher.chat_calls - asked
    assert paid == drafts, log.read_text()[-5000:]  # one reflection per draft, none with the ORM's diagnosis
    prompts = [last_user_text(b) for b in teacher.requests[-paid:]]
    assert all("Find the first wrong step yourself" in p and "Reviewer's analysis" not in p for p in prompts)

    capsys.readouterr()
    assert main(["--stage", "ablations", "--config", str(config)]) == 0
    printed = capsys.readouterr().out
    assert teacher.chat_calls - asked == drafts  # nothing asked again after the kill
    assert "ablations: same: already done, reused" in printed
    assert (out / "ablations" / "same" / MARKER_NAME).read_bytes() == same_marker
    assert tree_digest(out) == before  # the run's own files were never written

    results = read_json(out / "ablations" / "results.json")
    rows = {r["name"]: r for r in results["variants"]}
    assert rows["same"]["performed"]["trainings"] == rows["same"]["performed"]["teacher_calls"] == 0
    assert rows["no_reflection"]["performed"]["trainings"] == rows["no_reflection"]["performed"]["teacher_calls"] == 0
    assert rows["same"]["reused"].endswith("eval read from eval/final/bench")
    assert rows["no_reflection"]["reused"].endswith("eval read from eval/stage2/bench")
    assert rows["no_reflection"]["model"] == "stage2" and rows["same"]["model"] == "final"
    # Reusing everything means the same outcomes as the run's: the paired test finds no difference.
    assert rows["same"]["benchmarks"]["bench"]["vs_main"]["p_value"] == 1.0
    feedback = rows["teacher_feedback"]
    assert feedback["performed"]["trained"] == ["reflection_model_final"]
    assert feedback["performed"]["teacher_calls"] == drafts and feedback["reused"] == ""
    assert (out / "ablations" / "teacher_feedback" / "eval" / "final" / "bench" / MARKER_NAME).is_file()
    assert json.loads((out / "report" / "report.json").read_text())["ablations"]["variants"][0]["name"] == "same"
    assert "| teacher_feedback | final |" in (out / "ablations" / "results.md").read_text()

    # A variant edited since it ran is stale: one line, exit 2, nothing lost; --redo ablations redoes it.
    with_variants(config, [{"name": "same", "overrides": {"inference.concurrency": 3}}, *VARIANTS[1:]])
    capsys.readouterr()
    assert main(["--stage", "ablations", "--config", str(config)]) == 2
    assert "ablations: stale: variant same: its overrides changed since it ran" in capsys.readouterr().err
    assert (out / "ablations" / "same" / MARKER_NAME).read_bytes() == same_marker
    assert main(["--stage", "ablations", "--config", str(config), "--redo", "ablations"]) == 0
    rows = {r["name"]: r for r in read_json(out / "ablations" / "results.json")["variants"]}
    assert rows["same"]["overrides"] == {"inference.concurrency": 3} and rows["same"]["performed"]["trainings"] == 0
    assert teacher.chat_calls - asked == drafts


def test_distilled_equal_size_asks_once_per_accepted_path_and_keeps_like_distill(run_config, tmp_path) -> None:
    cfg = load_config(with_variants(run_config(teacher={"model": "teacher", "filter_by_answer": True}),
                                    [{"preset": "distilled_equal_size"}]))
    (_, vcfg, until), = ablations.variants(cfg)
    assert until == "distill" and ablations.stages(vcfg, until) == ["distill"]
    chosen = tmp_path / "chosen.jsonl"
    rows = [{"id": pid, "question": f"What is {pid}?", "images": [], "answer": "2", "prompt": f"P {pid}"}
            for pid in ("p1", "p1", "p2")]
    chosen.write_text("".join(json.dumps(r) + "\n" for r in rows))
    requests = list(ablations._distill_requests(vcfg.teacher, chosen))
    assert [(r.key, r.cache_salt) for _, r in requests] == [("p1#0", None), ("p1#1", "distilled-1"), ("p2#0", None)]
    assert "What is p1?" in str(requests[0][1].messages[-1])  # the distill prompt, with the reference answer
    seed_d_sft = vcfg.output_dir / "distill" / "d_sft.jsonl"
    seed_d_sft.parent.mkdir(parents=True)
    seed_d_sft.write_text(json.dumps({"id": "s1", "prompt": "S", "images": [], "answer": "1", "response": "r",
                                      "origin": "seed"}) + "\n")
    (vcfg.output_dir / "distilled").mkdir()
    with Journal(tmp_path / "replies.jsonl") as journal:
        journal.append({"key": "p1#0", "text": "The final answer is \\boxed{2}"})
        journal.append({"key": "p1#1", "text": "The final answer is \\boxed{3}"})  # wrong: dropped
        journal.append({"key": "p2#0", "text": "The final answer is \\boxed{2}"})
        counts = ablations._write_distilled(vcfg, vcfg.teacher, chosen, journal)
    assert counts == {"accepted_paths": 3, "teacher_kept": 2, "teacher_dropped": 1, "seed_rows": 1, "d_sft": 3}
    written = [json.loads(line) for line in (vcfg.output_dir / "distilled" / "d_sft.jsonl").read_text().splitlines()]
    assert [(r["id"], r["origin"]) for r in written] == [("s1", "seed"), ("p1", "teacher_distilled"),
                                                          ("p2", "teacher_distilled")]
    assert len(json.loads((vcfg.dataset_dir / "mathse_distilled_equal_size.json").read_text())) == 3


def test_the_presets_behaviour_keys_binary_orm_targets_and_teacher_feedback_prompt(run_config) -> None:
    from mathse.judging.orm_data import LabelledPath
    from mathse.model.prompts import reflection_prompt
    from mathse.run.records import JudgedPathRow

    path = LabelledPath(id="p", question="What is 1 + 1?", answer="2", path="Step 1: 1 + 1 = 3\nThe final answer is 3",
                        correct=False, error_step=1, analysis="1 + 1 is 2, not 3.")
    assert json.loads(path.example().response) == {"correct": False, "error_step": 1, "analysis": "1 + 1 is 2, not 3."}
    assert json.loads(path.example("binary").response) == {"correct": False, "error_step": None, "analysis": ""}
    assert path.example("binary").prompt == path.example().prompt  # the same paths, the same prompt

    cfg = load_config(with_variants(run_config(), [{"preset": "teacher_feedback"}]))
    (_, vcfg, _), = ablations.variants(cfg)
    draft = JudgedPathRow(id="p", question="What is 1 + 1?", images=[], answer="2", round=1, sample=0, prompt="P",
                          reasoning=path.path, error_step=1, analysis="1 + 1 is 2, not 3.")
    with_orm, without = reflection_prompt(cfg, draft), reflection_prompt(vcfg, draft)
    assert "first error at step 1" in with_orm and "1 + 1 is 2, not 3." in with_orm
    assert "first error" not in without and "Reviewer" not in without and "not 3." not in without
    assert "Step 1: 1 + 1 = 3" in without and "Find the first wrong step yourself" in without
