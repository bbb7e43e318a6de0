"""The package's shape: no import cycle, no oversized module, the folders the README names.

Every import counts (module level, inside functions, under `if TYPE_CHECKING:`): a lazy import
that closes a loop is still a loop a reader has to untangle.
"""

from __future__ import annotations

import ast
from pathlib import Path

from tests.conftest import PROJECT_ROOT

PACKAGE = PROJECT_ROOT / "mathse"
MAX_LINES = 500
FOLDERS = {"run", "api", "model", "judging", "answers", "demo", "reporting", "stages", "testing", "data"}


def module_name(path: Path) -> str:
    parts = path.relative_to(PROJECT_ROOT).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def import_graph() -> dict[str, set[str]]:
    """module -> the project modules it imports (`from pkg import module` counts as the module)."""
    paths = {module_name(p): p for p in PACKAGE.rglob("*.py")}
    graph: dict[str, set[str]] = {}
    for name, path in paths.items():
        package = name if path.name == "__init__.py" else name.rpartition(".")[0]
        deps: set[str] = set()
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
            if isinstance(node, ast.Import):
                deps.update(a.name for a in node.names if a.name in paths)
            elif isinstance(node, ast.ImportFrom):
                base = node.module or ""
                if node.level:
                    up = package.split(".")[: len(package.split(".")) - node.level + 1]
                    base = ".".join([*up, *([node.module] if node.module else [])])
                for alias in node.names:
                    target = f"{base}.{alias.name}"
                    deps.add(target if target in paths else base)
        graph[name] = {d for d in deps if d in paths and d != name}
    return graph


def cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """The strongly connected components with more than one module (Tarjan), each sorted."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    found: list[list[str]] = []

    def visit(v: str) -> None:
        index[v] = low[v] = len(index)
        stack.append(v)
        on_stack.add(v)
        for w in sorted(graph[v]):
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in on_stack:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            component = []
            while True:
                w = stack.pop()
                on_stack.discard(w)
                component.append(w)
                if w == v:
                    break
            if len(component) > 1:
                found.append(sorted(component))

    for v in sorted(graph):
        if v not in index:
            visit(v)
    return found


def test_the_import_graph_has_no_cycle() -> None:
    graph = import_graph()
    assert len(graph) > 50 and "mathse.run.config" in graph["mathse.cli"]  # the graph sees `from pkg import mod`
    assert cycles(graph) == [], "import cycles (each a set of modules importing one another)"


def test_cycle_finder_finds_a_lazy_two_module_loop() -> None:
    graph = {"a": {"b"}, "b": {"a", "c"}, "c": set(), "d": {"d2"}, "d2": {"e"}, "e": {"d"}}
    assert cycles(graph) == [["a", "b"], ["d", "d2", "e"]]


def test_no_module_over_500_lines() -> None:
    sizes = {module_name(p): len(p.read_text(encoding="utf-8").splitlines()) for p in PACKAGE.rglob("*.py")}
    assert {m: n for m, n in sizes.items() if n > MAX_LINES} == {}


def test_top_level_holds_folders_and_the_cli_only() -> None:
    modules = {p.stem for p in PACKAGE.glob("*.py")}
    folders = {p.name for p in PACKAGE.iterdir() if (p / "__init__.py").is_file()}
    assert modules == {"__init__", "cli"}
    assert folders == FOLDERS
    readme = (PROJECT_ROOT / "README.md").read_text(encoding="utf-8")
    assert all(f"mathse/{folder}/" in readme for folder in FOLDERS), "README's layout paragraph names every folder"


def test_no_stage_imports_another_and_library_code_imports_no_stage() -> None:
    graph = import_graph()
    for module, deps in graph.items():
        stages = {d for d in deps if d.startswith("mathse.stages.")}
        if module.startswith("mathse.stages."):
            assert stages == set(), module
        elif module not in {"mathse.cli", "mathse.stages"} and not module.startswith(("mathse.testing", "mathse.demo")):
            assert stages == set(), f"{module} imports a stage: {stages}"
