"""The GPU install resolves: pip's own resolver, a dry run against the package index (slow, network)."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from tests.conftest import PROJECT_ROOT

pytestmark = pytest.mark.slow


def resolve(requirements: Path, report: Path) -> dict[str, str]:
    """name -> version pip would install into an empty environment (nothing is installed)."""
    cmd = [sys.executable, "-m", "pip", "install", "--dry-run", "--ignore-installed", "--quiet",
           "-r", str(requirements), "--report", str(report)]
    done = subprocess.run(cmd, capture_output=True, text=True, timeout=1500)
    assert done.returncode == 0, f"pip cannot resolve {requirements.name}:\n{done.stderr[-3000:]}"
    rows = json.loads(report.read_text())["install"]
    return {row["metadata"]["name"].lower(): row["metadata"]["version"] for row in rows}


def test_gpu_requirements_resolve_with_the_project_pins(tmp_path: Path) -> None:
    versions = resolve(PROJECT_ROOT / "requirements-gpu.txt", tmp_path / "report.json")
    pins = (PROJECT_ROOT / "requirements.txt").read_text()
    assert f"torch==={versions['torch']}" in pins  # the project's torch, not one DeepSpeed pulled in
    assert versions["llamafactory"] == "0.9.5"
    assert "deepspeed" in versions and "ray" in versions  # ZeRO-3 of the shipped config.yaml; Ray placement
    assert "vllm" not in versions  # vLLM lives in its own environment (requirements-vllm.txt)
