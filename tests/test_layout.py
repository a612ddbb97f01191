"""The package layout's import rules (DEVELOPERS: cli -> commands -> api/train/eval/... -> data/config -> core), read
from the source with ``ast`` so a violation fails here rather than as a circular import at run time."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

PKG = Path(__file__).resolve().parents[1] / "vattcli"


def _module_name(path: Path) -> str:
    parts = path.relative_to(PKG.parent).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def _imports() -> dict[str, set[str]]:
    """module -> the vattcli modules it imports (at top level or inside functions)."""
    graph: dict[str, set[str]] = {}
    for path in sorted(PKG.rglob("*.py")):
        name = _module_name(path)
        found: set[str] = set()
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
            if isinstance(node, ast.ImportFrom) and node.module and node.module.startswith("vattcli"):
                found.add(node.module)
            elif isinstance(node, ast.Import):
                found.update(a.name for a in node.names if a.name.startswith("vattcli"))
        graph[name] = found
    return graph


GRAPH = _imports()


def _area(module: str) -> str:
    parts = module.split(".")
    return parts[1] if len(parts) > 1 else ""


@pytest.mark.parametrize("lower, upper", [
    ("core", "data"), ("core", "train"), ("core", "eval"), ("core", "config"), ("core", "checkpoints"),
    ("data", "train"), ("data", "eval"), ("data", "api"), ("data", "checkpoints"),
    ("checkpoints", "train"), ("checkpoints", "eval"), ("checkpoints", "api"), ("checkpoints", "convert"),
    ("eval", "train"), ("eval", "commands"), ("train", "commands"), ("convert", "train"), ("convert", "eval"),
    ("retrieval", "eval"), ("retrieval", "train"), ("retrieval", "indexing"), ("retrieval", "serve"),
    ("retrieval", "api"), ("data", "retrieval"), ("data", "indexing"), ("eval", "indexing"), ("eval", "serve"),
    ("indexing", "train"), ("indexing", "eval"), ("indexing", "serve"), ("indexing", "api"), ("serve", "train"),
    ("serve", "indexing"), ("serve", "commands"), ("ann", "retrieval"), ("ann", "data"), ("ann", "core"),
])
def test_lower_layers_never_import_upper_ones(lower, upper):
    offenders = sorted(f"{m} -> {t}" for m, targets in GRAPH.items() if _area(m) == lower
                       for t in targets if _area(t) == upper)
    assert not offenders, f"{lower}/ must not import {upper}/: {offenders}"


def test_nothing_imports_the_cli():
    offenders = sorted(m for m, targets in GRAPH.items() if "vattcli.cli" in targets and m != "vattcli.cli")
    assert not offenders


def test_no_import_cycles_between_modules():
    """Depth-first search for a cycle in the module graph (``vattcli`` itself, for ``__version__``, excluded)."""
    graph = {m: {t for t in ts if t in GRAPH and t != "vattcli" and t != m} for m, ts in GRAPH.items()}
    state: dict[str, int] = {}
    cycle: list[str] = []

    def visit(node: str, path: list[str]) -> bool:
        state[node] = 1
        for nxt in sorted(graph[node]):
            if state.get(nxt) == 1:
                cycle.extend(path[path.index(nxt):] + [node, nxt] if nxt in path else [node, nxt])
                return True
            if state.get(nxt) is None and visit(nxt, path + [node]):
                return True
        state[node] = 2
        return False

    for module in sorted(graph):
        if state.get(module) is None and visit(module, []):
            break
    assert not cycle, f"import cycle: {' -> '.join(cycle)}"


def test_no_module_is_far_over_the_size_rule():
    big = sorted(f"{p.relative_to(PKG)} ({n} lines)" for p in PKG.rglob("*.py")
                 if (n := len(p.read_text(encoding="utf-8").splitlines())) > 450)
    assert not big, f"files over ~400 lines: {big}"
