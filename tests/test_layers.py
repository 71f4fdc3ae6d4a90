"""The package's layers, read from the code: every import of an ``audit`` module (function-local ones too).

Layers, lowest first: the foundation (errors, settings, atomic writes, outputs, package data) < losses < load <
reduce < run < stats < report < compare (the auditor's Python API: compare, token_audit) < recipes < the interfaces (CLI, pytest
plugin, testing helpers, the package face). A module imports its own layer or lower ones, never a higher one;
there is no import cycle; function-local imports of the package's own modules are only where they defer torch
(the interfaces) or triton (the kernels).

``python tests/test_layers.py`` prints the graph (modules, edges per layer pair, cycles, lines per layer).
"""

from __future__ import annotations

import ast
import sys
from collections import defaultdict
from pathlib import Path

PACKAGE = Path(__file__).resolve().parents[1] / "audit"
LAYERS = ("foundation", "losses", "load", "reduce", "run", "stats", "report", "compare", "recipes", "interfaces")
FOUNDATION = {"audit.errors", "audit.settings", "audit.atomic", "audit.outputs", "audit.package"}
INTERFACES = {"audit", "audit.__main__", "audit.cli", "audit.integrations", "audit.pytest_plugin", "audit.testing"}
API = {"audit.compare", "audit.token_audit"}  # the auditor's Python API: the token audit under the classifier's face
# function-local imports of audit modules, by importing module: the reason they are deferred
DEFERRED = {
    "audit": "the package face imports no torch until the API is used",
    "audit.cli": "--help and usage errors answer before torch loads",
    "audit.pytest_plugin": "installed, the plugin loads in every pytest session; torch only when it is used",
    "audit.losses": "the Triton kernels import triton, an optional dependency",
    "audit.losses.kernels": "the Triton kernels import triton, an optional dependency",
    "audit.reduce.reduction": "the Triton kernel imports triton, an optional dependency",
}
TRAINING = ("audit.recipes.train", "audit.recipes.train_lm", "audit.recipes.training_run")


def module_name(path: Path) -> str:
    parts = path.relative_to(PACKAGE.parent).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def layer(module: str) -> str:
    if module in FOUNDATION:
        return "foundation"
    if module in INTERFACES:
        return "interfaces"
    if module in API:
        return "compare"
    return module.split(".")[1]


def imports(path: Path, modules: set[str]) -> list[tuple[str, bool]]:
    """(imported audit module, whether the import is inside a function) of every import in ``path``."""
    tree = ast.parse(path.read_text())
    inside: set[int] = set()
    for node in ast.walk(tree):
        if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
            inside.update(id(n) for n in ast.walk(node) if n is not node)
    found = []
    package = module_name(path) if path.name == "__init__.py" else module_name(path).rpartition(".")[0]
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            names = [a.name for a in node.names]
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                base = ".".join(package.split(".")[: len(package.split(".")) - node.level + 1] + ([base] if base else []))
            names = [f"{base}.{a.name}" if f"{base}.{a.name}" in modules else base for a in node.names]
        else:
            continue
        found += [(name, id(node) in inside) for name in names if name in modules]
    return found


def graph() -> tuple[dict[str, set[str]], dict[str, set[str]]]:
    """``(edges, deferred)``: module -> the audit modules it imports, at module level and inside functions."""
    paths = {module_name(p): p for p in PACKAGE.rglob("*.py") if "_fixtures" not in p.parts}
    modules = set(paths)
    edges, deferred = defaultdict(set), defaultdict(set)
    for module, path in paths.items():
        edges[module]
        for imported, local in imports(path, modules):
            if imported != module:
                (deferred if local else edges)[module].add(imported)
    return dict(edges), dict(deferred)


def cycles(edges: dict[str, set[str]]) -> list[list[str]]:
    """The strongly connected components of more than one module (Tarjan)."""
    index, low, stack, on_stack, out = {}, {}, [], set(), []

    def visit(v: str) -> None:
        index[v] = low[v] = len(index)
        stack.append(v)
        on_stack.add(v)
        for w in edges.get(v, ()):
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
                out.append(sorted(component))

    for v in sorted(edges):
        if v not in index:
            visit(v)
    return out


def test_cycles_finds_a_loop_and_layer_reads_the_folders():
    assert cycles({"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}) == [["a", "b", "c"]]
    assert cycles({"a": {"b"}, "b": set()}) == []
    assert [layer(m) for m in ("audit.errors", "audit.run.cache", "audit.cli", "audit.stats")] == [
        "foundation", "run", "interfaces", "stats"]


def test_no_import_cycle_counting_function_local_imports():
    edges, deferred = graph()
    both = {m: edges.get(m, set()) | deferred.get(m, set()) for m in set(edges) | set(deferred)}
    assert cycles(both) == []


def test_no_module_imports_a_higher_layer():
    edges, deferred = graph()
    upward = [f"{m} ({layer(m)}) -> {i} ({layer(i)})" for source in (edges, deferred) for m, targets in source.items()
              for i in targets if LAYERS.index(layer(i)) > LAYERS.index(layer(m))]
    assert upward == []


def test_function_local_imports_only_where_they_defer_a_heavy_dependency():
    _, deferred = graph()
    assert {m for m, targets in deferred.items() if targets} <= set(DEFERRED)


def test_training_does_not_import_the_auditor():
    edges, deferred = graph()
    assert all(not API & (edges.get(m, set()) | deferred.get(m, set())) for m in TRAINING)


def main() -> None:
    edges, deferred = graph()
    pairs = defaultdict(int)
    for m, targets in edges.items():
        for i in targets:
            pairs[(layer(m), layer(i))] += 1
    lines = defaultdict(int)
    for path in PACKAGE.rglob("*.py"):
        if "_fixtures" not in path.parts:
            lines[layer(module_name(path))] += len(path.read_text().splitlines())
    print(f"{len(edges)} modules, {sum(map(len, edges.values()))} module-level and "
          f"{sum(map(len, deferred.values()))} function-local imports of audit modules")
    print("cycles:", cycles({m: edges.get(m, set()) | deferred.get(m, set()) for m in edges}) or "none")
    for name in LAYERS:
        below = ", ".join(f"{t} ({pairs[(name, t)]})" for t in LAYERS if pairs[(name, t)] and t != name)
        print(f"{name:>11}: {lines[name]:5d} lines; imports {below or 'nothing of audit'}")


if __name__ == "__main__":
    sys.exit(main())
