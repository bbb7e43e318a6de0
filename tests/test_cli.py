"""The command line as a user types it: help, config errors as one line with exit code 2."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def run(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "main.py", *args], cwd=ROOT, capture_output=True, text=True, timeout=120)


def test_help_lists_every_stage() -> None:
    from mathse.cli import STAGES

    proc = run("--help")
    assert proc.returncode == 0
    for stage in [*STAGES, "all"]:
        assert f"  {stage} " in proc.stdout


def test_misspelled_override_exits_2_with_one_line(tmp_path: Path) -> None:
    proc = run("--stage", "distill", "--config", "config.yaml", "--set", "llama_factory.learning_rat=1e-5")
    assert proc.returncode == 2
    assert proc.stderr.strip().splitlines() == [
        "config error: llama_factory.learning_rat: unknown key (did you mean 'learning_rate'?)"
    ]
    assert "Traceback" not in proc.stderr


def test_console_script_is_installed() -> None:
    proc = subprocess.run(["mathse", "--help"], capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0 and "--stage" in proc.stdout


def test_dry_run_of_the_whole_pipeline_writes_nothing(run_config, capsys) -> None:
    from mathse.cli import main

    config = run_config()
    assert main(["--stage", "all", "--config", str(config), "--dry-run"]) == 0
    printed = capsys.readouterr().out
    for stage in ("distill", "evolve", "reflect", "final", "report"):
        assert f"=== mathse: stage {stage} ===" in printed
    assert "llamafactory-cli train" in printed
    assert not (config.parent / "output").exists()


def test_shard_flags_only_go_with_evolve(run_config, capsys) -> None:
    from mathse.cli import main

    assert main(["--stage", "distill", "--config", str(run_config()), "--shard", "0/2"]) == 2
    assert "--shard and --merge go with --stage evolve" in capsys.readouterr().err
    assert main(["--stage", "evolve", "--config", str(run_config()), "--shard", "2/2"]) == 2
    assert "expected i/n with 0 <= i < n" in capsys.readouterr().err
