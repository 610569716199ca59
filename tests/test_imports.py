"""The import graph of minigrad/, optim/ and models/: no cycles, and the layering holds.

Every import statement counts, at module level or inside a function (a lazy import is still a
dependency). Layers: `minigrad` (the core) imports neither `optim` nor `models`; `optim` works on
NumPy arrays keyed by parameter name and does not import `models`; `models` may import both.
Also: no module assigns an attribute of a module it imported (`autograd.Tensor = Tensor`), which
would make one module's meaning depend on another having run first.
"""
import ast
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
PACKAGES = ("minigrad", "optim", "models")


def _module_name(path: Path) -> str:
    parts = path.relative_to(ROOT).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def _sources() -> dict:
    """{module name: (path, parsed tree)} for every .py file of the three packages."""
    found = {}
    for package in PACKAGES:
        for path in sorted((ROOT / package).rglob("*.py")):
            found[_module_name(path)] = (path, ast.parse(path.read_text(), str(path)))
    return found


SOURCES = _sources()


def _imported(module: str, path: Path, tree: ast.AST) -> set:
    """Every module that `module` imports anywhere in its body, relative imports resolved.

    `from pkg import name` is an edge to pkg.name when that is a module, else to pkg."""
    package = module if path.name == "__init__.py" else module.rpartition(".")[0]
    out = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            out.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = package.split(".")
                base = base[:len(base) - (node.level - 1)]
                source = ".".join(base + ([node.module] if node.module else []))
            else:
                source = node.module
            for alias in node.names:
                sub = f"{source}.{alias.name}"
                out.add(sub if sub in SOURCES else source)
    return out


def _graph() -> dict:
    return {m: _imported(m, path, tree) for m, (path, tree) in SOURCES.items()}


def _cycles(graph: dict) -> list:
    """Strongly connected components with more than one module (or a self-import): Tarjan."""
    index, low, on_stack, stack, found = {}, {}, set(), [], []

    def visit(v):
        index[v] = low[v] = len(index)
        stack.append(v)
        on_stack.add(v)
        for w in graph.get(v, ()):
            if w not in graph:
                continue  # outside the three packages
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
            if len(component) > 1 or v in graph[v]:
                found.append(sorted(component))

    for v in sorted(graph):
        if v not in index:
            visit(v)
    return found


def test_the_graph_sees_relative_and_function_level_imports():
    graph = _graph()
    assert "minigrad.autograd" in graph["minigrad.tensor"]          # from .autograd import ...
    assert "minigrad.functional" in graph["minigrad.kernels.reference"]  # from ..functional import
    assert "minigrad.kernels" in graph["minigrad.backend"]          # imported inside a function
    assert "minigrad" in graph["models.gpt"]


def test_the_cycle_finder_finds_cycles():
    assert _cycles({"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}) == [["a", "b", "c"]]
    assert _cycles({"a": {"a"}}) == [["a"]]
    assert _cycles({"a": {"b", "numpy"}, "b": set()}) == []


def test_no_import_cycles():
    cycles = _cycles(_graph())
    assert not cycles, "import cycles (break them: move the shared part into a leaf module): " + \
        "; ".join(" <-> ".join(c) for c in cycles)


@pytest.mark.parametrize("layer, forbidden", [("minigrad", ("optim", "models")), ("optim", ("models",))])
def test_layering(layer, forbidden):
    bad = sorted(f"{m} imports {t}" for m, targets in _graph().items() if m.split(".")[0] == layer
                 for t in targets if t.split(".")[0] in forbidden)
    assert not bad, f"{layer}/ must not import {' or '.join(forbidden)}: " + "; ".join(bad)


def _ours(node) -> bool:
    """True for an import from minigrad, optim or models (settings of other libraries, such as
    Numba's config object, are theirs to expose)."""
    if isinstance(node, ast.ImportFrom):
        return node.level > 0 or node.module.split(".")[0] in PACKAGES
    return any(a.name.split(".")[0] in PACKAGES for a in node.names)


def test_no_module_assigns_another_modules_attributes():
    bad = []
    for module, (path, tree) in SOURCES.items():
        imported = {(a.asname or a.name).split(".")[0] for node in ast.walk(tree)
                    if isinstance(node, (ast.Import, ast.ImportFrom)) and _ours(node) for a in node.names}
        for node in ast.walk(tree):
            targets = node.targets if isinstance(node, ast.Assign) else \
                [node.target] if isinstance(node, (ast.AugAssign, ast.AnnAssign)) else []
            for t in targets:
                if isinstance(t, ast.Attribute) and isinstance(t.value, ast.Name) and t.value.id in imported:
                    bad.append(f"{module}:{node.lineno} assigns {t.value.id}.{t.attr}")
    assert not bad, "; ".join(bad)
