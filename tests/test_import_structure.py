"""The import structure of huref: no import circle, and FP-Vec independent of the test-model zoo.

Imports are read from the source (every ``import`` and ``from ... import``, at module level or
inside a function; ``if TYPE_CHECKING:`` blocks excluded, as they never run). A circle means two
rooms that cannot be understood or changed apart; the readers a dispatcher calls (adapters, the
hub) are handed the opener instead of importing it back.
"""

from __future__ import annotations

import ast
from pathlib import Path

import huref

ROOT = Path(huref.__file__).parent


def _module_names() -> dict[str, Path]:
    out = {}
    for p in ROOT.rglob("*.py"):
        parts = p.relative_to(ROOT.parent).with_suffix("").parts
        name = ".".join(parts[:-1] if parts[-1] == "__init__" else parts)
        out[name] = p
    return out


def _is_type_checking(node: ast.If) -> bool:
    t = node.test
    return (isinstance(t, ast.Name) and t.id == "TYPE_CHECKING") or (
        isinstance(t, ast.Attribute) and t.attr == "TYPE_CHECKING"
    )


def _imports(path: Path, modules: dict[str, Path]) -> set[str]:
    """huref modules ``path`` imports; ``from pkg import sub`` counts as importing ``pkg.sub`` only."""
    found: set[str] = set()

    def visit(node: ast.AST) -> None:
        if isinstance(node, ast.If) and _is_type_checking(node):
            for child in node.orelse:
                visit(child)
            return
        if isinstance(node, ast.ImportFrom) and node.level == 0 and (node.module or "").startswith("huref"):
            subs = [f"{node.module}.{a.name}" for a in node.names if f"{node.module}.{a.name}" in modules]
            found.update(subs)
            if len(subs) < len(node.names):
                found.add(node.module or "")
        elif isinstance(node, ast.Import):
            found.update(a.name for a in node.names if a.name.startswith("huref"))
        for child in ast.iter_child_nodes(node):
            visit(child)

    visit(ast.parse(path.read_text()))
    return {m for m in found if m in modules}


def _graph() -> dict[str, set[str]]:
    modules = _module_names()
    return {m: _imports(p, modules) - {m} for m, p in modules.items()}


def _circles(graph: dict[str, set[str]]) -> list[list[str]]:
    """Strongly connected components of more than one module (Tarjan)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on: set[str] = set()
    found: list[list[str]] = []

    def connect(v: str) -> None:
        index[v] = low[v] = len(index)
        stack.append(v)
        on.add(v)
        for w in graph[v]:
            if w not in index:
                connect(w)
                low[v] = min(low[v], low[w])
            elif w in on:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            comp = []
            while True:
                w = stack.pop()
                on.discard(w)
                comp.append(w)
                if w == v:
                    break
            if len(comp) > 1:
                found.append(sorted(comp))

    for v in sorted(graph):
        if v not in index:
            connect(v)
    return found


def test_the_import_graph_is_read() -> None:
    g = _graph()
    assert "huref.checkpoint.core" in g["huref.checkpoint.open"]
    assert "huref.lm.train" in g["huref.fpvec.train"]  # a function-level import is seen too
    assert "huref.checkpoint.core" not in g["huref.checkpoint.hub"]  # TYPE_CHECKING-free module
    assert _circles({"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}) == [["a", "b", "c"]]


def test_no_import_circle() -> None:
    assert _circles(_graph()) == []


def test_fpvec_does_not_import_the_zoo() -> None:
    g = _graph()
    offenders = {m: sorted(d for d in deps if d.startswith("huref.zoo")) for m, deps in g.items()}
    assert {m: d for m, d in offenders.items() if m.startswith("huref.fpvec") and d} == {}
