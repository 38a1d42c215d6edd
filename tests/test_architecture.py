"""The package's shape as docs/architecture.md promises it: imports run one way along the pipeline's stages (an
import from a later stage into an earlier one fails), no cycle (counting imports inside functions too), small
modules, and a public API in ``pathoucc/__init__.py`` that loads no torch."""

from __future__ import annotations

import ast
import importlib
import re
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
PACKAGE = ROOT / "pathoucc"
DOC = ROOT / "docs" / "architecture.md"
MAX_LINES = 300


def _module_name(path: Path) -> str:
    parts = path.relative_to(PACKAGE.parent).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def _modules() -> dict[str, Path]:
    return {_module_name(p): p for p in sorted(PACKAGE.rglob("*.py"))}


def _imports(source: str, name: str, is_package: bool, known: set[str]) -> set[str]:
    """Every pathoucc module that ``source`` (module ``name``) imports, at module level or inside a function."""
    package = name if is_package else name.rpartition(".")[0]
    found = set()
    for node in ast.walk(ast.parse(source)):
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
    return {name: _imports(path.read_text(), name, path.name == "__init__.py", set(modules))
            for name, path in modules.items()}


def doc_stages() -> dict[str, int]:
    """``{top-level module or package: stage number}`` from the tree in docs/architecture.md (``├── data/  2 ...``)."""
    stages = {}
    for line in DOC.read_text().splitlines():
        match = re.match(r"^[├└]── (\w+)(?:\.py|/)\s+(\d)\s", line)
        if match:
            stages[f"pathoucc.{match.group(1)}"] = int(match.group(2))
    return stages


def stage_of(module: str, stages: dict[str, int]) -> int:
    """The stage of a module: that of its top-level module or package (``pathoucc`` itself: 0)."""
    top = ".".join(module.split(".")[:2])
    return 0 if top == "pathoucc" else stages[top]


def order_violations(graph: dict[str, set[str]], stages: dict[str, int]) -> list[str]:
    return sorted(f"{a} (stage {stage_of(a, stages)}) imports {b} (stage {stage_of(b, stages)})"
                  for a, targets in graph.items() for b in targets if stage_of(b, stages) > stage_of(a, stages))


def test_the_doc_names_every_top_level_module() -> None:
    stages = doc_stages()
    tops = {".".join(name.split(".")[:2]) for name in _modules()} - {"pathoucc"}
    assert tops == set(stages), f"in the package, not the doc: {tops - set(stages)}; " \
                                f"in the doc, not the package: {set(stages) - tops}"


def test_imports_follow_the_stage_order() -> None:
    assert order_violations(_graph(), doc_stages()) == []


def test_an_import_against_the_order_is_caught() -> None:
    stages = doc_stages()
    graph = _graph()
    known = set(_modules())
    # a slides module (stage 1) that imports the segmentation stage (6) must fail the check
    graph["pathoucc.slides.tiler"] |= _imports("from pathoucc.segment import segment_run", "pathoucc.slides.tiler",
                                               False, known)
    assert any(v.startswith("pathoucc.slides.tiler (stage 1) imports pathoucc.segment")
               for v in order_violations(graph, stages))


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
    assert "pathoucc.pipeline" in graph["pathoucc.cli.runs"]  # imported inside the `train` command
    assert "pathoucc.files" in graph["pathoucc.config"]


@pytest.mark.parametrize("name", sorted(_modules()))
def test_modules_are_small(name: str) -> None:
    lines = len(_modules()[name].read_text().splitlines())
    assert lines <= MAX_LINES, f"{name} has {lines} lines (at most {MAX_LINES})"


def test_import_loads_no_torch() -> None:
    code = "import sys, pathoucc; pathoucc.load_config; print('torch' in sys.modules)"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True, cwd=ROOT)
    assert out.stdout.strip() == "False"


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
