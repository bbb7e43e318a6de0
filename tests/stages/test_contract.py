"""Every stage keeps the `Stage` contract and imports no other stage."""

from __future__ import annotations

import ast
import inspect
from pathlib import Path

import pytest

from mathse.cli import STAGES
from mathse.stages import load_stage

STAGES_DIR = Path(__file__).resolve().parents[2] / "mathse" / "stages"


@pytest.mark.parametrize("name", sorted(STAGES))
def test_stage_module_has_run_finished_artifacts(name: str) -> None:
    module = load_stage(STAGES[name][0])
    for attr in ("run", "finished", "artifacts"):
        func = getattr(module, attr)
        assert callable(func), f"{name}.{attr}"
        assert next(iter(inspect.signature(func).parameters)) == "cfg"
    assert inspect.signature(module.run).parameters["dry_run"].default is False


@pytest.mark.parametrize("path", sorted(STAGES_DIR.glob("*.py")), ids=lambda p: p.name)
def test_no_stage_imports_another(path: Path) -> None:
    tree = ast.parse(path.read_text(encoding="utf-8"))
    imported = [node.module or "" for node in ast.walk(tree) if isinstance(node, ast.ImportFrom)]
    imported += [alias.name for node in ast.walk(tree) if isinstance(node, ast.Import) for alias in node.names]
    if path.name == "ablations.py":
        # The one orchestrating stage: it runs the others as `--stage all` does, by name through the
        # `Stage` protocol (`mathse.stages.load_stage`), and imports no stage module's code.
        assert [m for m in imported if m.startswith("mathse.stages")] == ["mathse.stages"], path.name
        return
    assert not [m for m in imported if m.startswith("mathse.stages")], path.name
