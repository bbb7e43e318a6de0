"""Seeding a variant's folder from a run: markers byte for byte, finished models and the answer cache
linked, the rest copied, nothing of the run writable through the variant; the counts from its baseline."""

from __future__ import annotations

import json
import os
from pathlib import Path

from mathse.run.config_loading import load_config, variant_config
from mathse.run.storage import MARKER_NAME, atomic_write_json, mark_done
from mathse.run.variants import SEEDED, performed, seed
from tests.conftest import write_run_config


def fake_run(out: Path) -> None:
    """A run's folder as the stages leave it (contents are stand-ins; only the layout matters)."""
    m0 = out / "sft_model_stage0"
    m0.mkdir(parents=True)
    (m0 / "model.safetensors").write_bytes(b"w" * 4096)
    mark_done(m0, {"consumed": {"values": {"training": {"lr": 1}}}})
    cut = out / "sft_model_round_1"  # a training cut short: no marker
    (cut / "checkpoint-2").mkdir(parents=True)
    (cut / "checkpoint-2" / "model.safetensors").write_bytes(b"x")
    os.symlink("sft_model_round_1", out / "sft_model_final")
    (out / "evolve").mkdir()
    (out / "evolve" / "sft_chosen.jsonl").write_text('{"id": "p1"}\n')
    cache = out / "cache" / "api" / "ab" / "cd"
    cache.mkdir(parents=True)
    (cache / "abcd.json").write_text('{"v": 1}')
    for skipped in ("eval/final/bench", "report", "ablations/other"):
        (out / skipped).mkdir(parents=True)
        (out / skipped / "file.txt").write_text("x")
    atomic_write_json(out / "usage.json", {"stages": {"distill": {"teacher": {"answered": 5, "prompt_tokens": 50}}}})


def test_seed_links_finished_models_and_the_cache_copies_the_rest_and_never_writes_the_run(
        tmp_path, tiny_model, demo_data) -> None:
    cfg = load_config(write_run_config(tmp_path, tiny_model, *demo_data, teacher={"model": "teacher"}))
    fake_run(cfg.output_dir)
    vcfg = variant_config(cfg, {"reflect.feedback": "teacher"}, cfg.output_dir / "ablations" / "v", "v")
    assert vcfg.reflect.feedback == "teacher" and vcfg.run.redo == ["all"] and vcfg.ablations == []
    baseline = seed(cfg, vcfg)
    src, dest = cfg.output_dir, vcfg.output_dir

    weights = dest / "sft_model_stage0" / "model.safetensors"
    assert os.path.samefile(weights, src / "sft_model_stage0" / "model.safetensors")  # linked, not copied
    marker = Path("sft_model_stage0") / MARKER_NAME
    assert (dest / marker).read_bytes() == (src / marker).read_bytes()
    assert os.path.samefile(dest / "cache/api/ab/cd/abcd.json", src / "cache/api/ab/cd/abcd.json")
    chosen = dest / "evolve" / "sft_chosen.jsonl"
    assert not os.path.samefile(chosen, src / "evolve" / "sft_chosen.jsonl")
    assert chosen.stat().st_mtime_ns == (src / "evolve" / "sft_chosen.jsonl").stat().st_mtime_ns
    assert os.readlink(dest / "sft_model_final") == "sft_model_round_1"  # relative: the variant's own
    for absent in ("sft_model_round_1", "eval", "report", "ablations"):
        assert not (dest / absent).exists(), absent
    assert baseline["files"]["linked"] == 3 and baseline["usage"] == {
        "teacher": {"answered": 5, "cached": 0, "prompt_tokens": 50, "completion_tokens": 0}}

    with chosen.open("a") as handle:  # a journal appended to in the variant
        handle.write('{"id": "p2"}\n')
    assert (src / "evolve" / "sft_chosen.jsonl").read_text() == '{"id": "p1"}\n'

    # Seeded once: a second call returns the baseline; then what the variant did is counted from it.
    assert seed(cfg, vcfg) == baseline
    mark_done(dest / "sft_model_stage0", {"retrained": True})  # atomic write: a new file, the link is gone
    assert json.loads((src / "sft_model_stage0" / MARKER_NAME).read_text()) != {"retrained": True}
    atomic_write_json(dest / "usage.json", {"stages": {
        "distill": {"teacher": {"answered": 5, "prompt_tokens": 50}},
        "reflect": {"teacher": {"answered": 3, "cached": 2, "prompt_tokens": 30, "completion_tokens": 9}}}})
    done = performed(vcfg, baseline)
    assert (done["teacher_calls"], done["teacher_tokens"], done["trainings"]) == (3, 39, 1)
    assert done["trained"] == ["sft_model_stage0"]


def test_a_seeding_cut_short_is_started_over(tmp_path, tiny_model, demo_data) -> None:
    cfg = load_config(write_run_config(tmp_path, tiny_model, *demo_data))
    fake_run(cfg.output_dir)
    vcfg = variant_config(cfg, {}, cfg.output_dir / "ablations" / "v", "v")
    (vcfg.output_dir / "evolve").mkdir(parents=True)
    (vcfg.output_dir / "evolve" / "half-copied.jsonl").write_text("{")
    seed(cfg, vcfg)
    assert (vcfg.output_dir / SEEDED).is_file() and not (vcfg.output_dir / "evolve" / "half-copied.jsonl").exists()
    assert performed(vcfg, json.loads((vcfg.output_dir / SEEDED).read_text()))["trainings"] == 0
