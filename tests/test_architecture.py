"""The package's shape: imports run one way (no cycle, counting imports inside functions too), small modules,
and a public API in ``pathoucc/__init__.py``."""

from __future__ import annotations

import ast
import importlib
from pathlib import Path

import pytest

PACKAGE = Path(__file__).resolve().parents[1] / "pathoucc"
MAX_LINES = 400


def _module_name(path: Path) -> str:
    parts = path.relative_to(PACKAGE.parent).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def _modules() -> dict[str, Path]:
    return {_module_name(p): p for p in sorted(PACKAGE.rglob("*.py"))}


def _imports(path: Path, name: str, known: set[str]) -> set[str]:
    """Every pathoucc module that ``path`` imports, at module level or inside a function."""
    package = name if path.name == "__init__.py" else name.rpartition(".")[0]
    found = set()
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            targets = [a.name for a in node.names]
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:  # relative: `from .grid import x` in pathoucc.segment.segment -> pathoucc.segment.grid
                parent = package.split(".")[: len(package.split(".")) - node.level + 1]
                base = ".".join([*parent, base] if base else parent)
            targets = [f"{base}.{a.name}" for a in node.names] + [base]
        else:
            continue
        for target in targets:
            while target and target not in known:  # `from pathoucc.x import name`: the module is pathoucc.x
                target = target.rpartition(".")[0]
            if target and target != name and target != "pathoucc":
                found.add(target)
    return found


def _graph() -> dict[str, set[str]]:
    modules = _modules()
    return {name: _imports(path, name, set(modules)) for name, path in modules.items()}


def test_no_import_cycle() -> None:
    graph = _graph()
    state: dict[str, int] = {}  # 1 on the current path, 2 done

    def visit(node: str, path: list[str]) -> None:
        state[node] = 1
        for nxt in sorted(graph[node]):
            if state.get(nxt) == 1:
                cycle = [*path[path.index(nxt):], nxt]
                pytest.fail("import cycle: " + " -> ".join(cycle))
            if nxt not in state:
                visit(nxt, [*path, nxt])
        state[node] = 2

    for node in sorted(graph):
        if node not in state:
            visit(node, [node])


def test_the_graph_sees_imports_inside_functions() -> None:
    graph = _graph()
    assert "pathoucc.cluster" in graph["pathoucc.cli"]  # imported inside the `evaluate` command
    assert "pathoucc.files" in graph["pathoucc.config"]


@pytest.mark.parametrize("name", sorted(_modules()))
def test_modules_are_small(name: str) -> None:
    lines = len(_modules()[name].read_text().splitlines())
    assert lines <= MAX_LINES, f"{name} has {lines} lines (at most {MAX_LINES})"


def test_public_api() -> None:
    import pathoucc

    for name in pathoucc.__all__:
        assert getattr(pathoucc, name) is not None, name
    pipeline = importlib.import_module("pathoucc.pipeline")
    assert pathoucc.train_run is pipeline.train_run and pathoucc.refine_run is pipeline.refine_run  # = the CLI
    assert pathoucc.TrainReport is pipeline.TrainReport
    assert pathoucc.train_ucc is importlib.import_module("pathoucc.training.train").train_ucc
    with pytest.raises(AttributeError):
        _ = pathoucc.no_such_name
