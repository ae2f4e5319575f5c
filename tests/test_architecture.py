"""The import rules of docs/architecture.md, read from the code itself:

* no import cycles among the project's modules (imports under
  ``if TYPE_CHECKING:`` do not count; imports inside functions do);
* the layer order written in docs/architecture.md ("Layers"): no module
  imports one of a layer above its own;
* only ``recommender.index`` imports faiss; only the store modules and the
  evaluation's baselines import sqlite3;
* no module (of the package or of scripts/) imports another module's
  private name (``from m import _x``, or ``m._x`` through an imported module);
* imports of the project's own modules sit at the top of a module, except in
  the entry points that keep ``--help`` and the app factory light
  (``ENTRY_POINTS``).

Run it as a command to see the module tree, the import graph, its cycles and
its upward imports:

    .venv/bin/python tests/test_architecture.py [--graph]
"""

from __future__ import annotations

import ast
import re
import sys
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
PACKAGE = ROOT / "recommender"
ARCHITECTURE = ROOT / "docs" / "architecture.md"
ENTRY_POINTS = {"recommender.cli", "recommender.api.app"}
"""Modules whose commands and factories import the project's heavier modules when they run."""
FAISS_MODULES = {"recommender.index"}
SQLITE_MODULES = {"recommender.store", "recommender.evaluation.baselines"}
"""Modules (or packages: their submodules too) that may import sqlite3."""


@dataclass(frozen=True)
class Import:
    importer: str
    target: str
    """A module of the project (``recommender.x.y``), or a third-party top-level name (``faiss``)."""
    names: tuple[str, ...]
    line: int
    type_checking: bool
    in_function: bool


def module_name(path: Path, root: Path = ROOT) -> str:
    parts = list(path.relative_to(root).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


def project_modules(package: Path = PACKAGE) -> dict[str, Path]:
    return {module_name(p, package.parent): p for p in sorted(package.rglob("*.py"))}


def _is_type_checking(test: ast.expr) -> bool:
    return (isinstance(test, ast.Name) and test.id == "TYPE_CHECKING") or (
        isinstance(test, ast.Attribute) and test.attr == "TYPE_CHECKING")


def imports_of(path: Path, name: str, modules: dict[str, Path]) -> Iterator[Import]:
    """Every import statement of a file, resolved to project modules where it names one."""
    tree = ast.parse(path.read_text(encoding="utf-8"), str(path))
    package = name if path.name == "__init__.py" else name.rpartition(".")[0]

    def visit(node: ast.AST, type_checking: bool, in_function: bool) -> Iterator[Import]:
        for child in ast.iter_child_nodes(node):
            if isinstance(child, ast.If) and _is_type_checking(child.test):
                for sub in child.body:
                    yield from visit_one(sub, True, in_function)
                for sub in child.orelse:
                    yield from visit_one(sub, type_checking, in_function)
                continue
            yield from visit_one(child, type_checking, in_function)

    def visit_one(node: ast.AST, type_checking: bool, in_function: bool) -> Iterator[Import]:
        if isinstance(node, ast.Import):
            for alias in node.names:
                yield Import(name, _resolve(alias.name, modules), (), node.lineno, type_checking, in_function)
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                parts = package.split(".")
                base = ".".join(parts[: len(parts) - node.level + 1] + ([base] if base else []))
            names = tuple(a.name for a in node.names)
            submodules = [f"{base}.{n}" for n in names if f"{base}.{n}" in modules]
            for target in submodules:
                yield Import(name, target, (), node.lineno, type_checking, in_function)
            rest = tuple(n for n in names if f"{base}.{n}" not in modules)
            if rest or not submodules:
                yield Import(name, _resolve(base, modules), rest, node.lineno, type_checking, in_function)
        else:
            function = in_function or isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef, ast.Lambda))
            yield from visit(node, type_checking, function)

    yield from visit(tree, False, False)


def _resolve(target: str, modules: dict[str, Path]) -> str:
    if target.startswith("recommender"):
        return target
    return target.split(".")[0]


def graph(modules: dict[str, Path] | None = None) -> tuple[dict[str, set[str]], list[Import]]:
    """Module -> the project modules it imports at run time (a submodule's
    import runs its packages' ``__init__`` too), and every import found."""
    modules = modules or project_modules()
    edges: dict[str, set[str]] = {m: set() for m in modules}
    found: list[Import] = []
    for name, path in modules.items():
        for imp in imports_of(path, name, modules):
            found.append(imp)
            if imp.type_checking or imp.target not in modules:
                continue
            targets = {imp.target}
            parts = imp.target.split(".")
            targets |= {".".join(parts[:i]) for i in range(2, len(parts))}  # the packages' __init__ run too
            for target in targets:
                if target != name and not name.startswith(target + "."):  # a package's own __init__ runs first
                    edges[name].add(target)
    return edges, found


def cycles(edges: dict[str, set[str]]) -> list[list[str]]:
    """Strongly connected components of more than one module (Tarjan)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    out: list[list[str]] = []

    def connect(v: str) -> None:
        index[v] = low[v] = len(index)
        stack.append(v)
        on_stack.add(v)
        for w in sorted(edges.get(v, ())):
            if w not in index:
                connect(w)
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

    sys.setrecursionlimit(10_000)
    for v in sorted(edges):
        if v not in index:
            connect(v)
    return out


def layers(text: str | None = None) -> list[list[str]]:
    """The layers of docs/architecture.md, bottom first: the lines of the
    fenced block after the heading "Layers", each ``N: module, module...``
    (a package name stands for its modules)."""
    text = ARCHITECTURE.read_text(encoding="utf-8") if text is None else text
    section = text.split("## Layers", 1)[1]
    block = section.split("```", 2)[1]
    out = []
    for line in block.splitlines():
        match = re.match(r"\s*(\d+)\s*:\s*(.+)", line)
        if match:
            out.append([m.strip() for m in match.group(2).split(",") if m.strip()])
    return out


def layer_of(module: str, spec: list[list[str]]) -> int | None:
    """The layer of the longest listed name that is the module or a package
    above it (the package's own ``__init__``, which holds the version, is below all)."""
    if module == "recommender":
        return 0
    best: tuple[int, int] | None = None
    for number, names in enumerate(spec):
        for listed in names:
            full = f"recommender.{listed}"
            if module == full or module.startswith(full + "."):
                if best is None or len(full) > best[1]:
                    best = (number, len(full))
    return None if best is None else best[0]


def upward(edges: dict[str, set[str]], spec: list[list[str]]) -> list[tuple[str, str]]:
    return sorted((a, b) for a, targets in edges.items() for b in targets
                  if (la := layer_of(a, spec)) is not None and (lb := layer_of(b, spec)) is not None and lb > la)


def private_imports(paths: dict[str, Path], modules: dict[str, Path] | None = None) -> list[str]:
    """``from m import _x`` of another module's private name, and ``m._x`` through an imported project module."""
    modules = project_modules() if modules is None else modules
    found = []
    for name, path in paths.items():
        tree = ast.parse(path.read_text(encoding="utf-8"), str(path))
        bound: dict[str, str] = {}
        for imp in imports_of(path, name, modules):
            if imp.target.startswith("recommender") and imp.target != name:
                found += [f"{name}:{imp.line} imports {imp.target}.{n}" for n in imp.names if _private(n)]
        for node in ast.walk(tree):
            if isinstance(node, ast.ImportFrom) and node.module and node.module.startswith("recommender"):
                for alias in node.names:
                    if f"{node.module}.{alias.name}" in modules:
                        bound[alias.asname or alias.name] = f"{node.module}.{alias.name}"
            elif isinstance(node, ast.Import):
                for alias in node.names:
                    if alias.name.startswith("recommender") and alias.asname:
                        bound[alias.asname] = alias.name
        for node in ast.walk(tree):
            if (isinstance(node, ast.Attribute) and isinstance(node.value, ast.Name) and node.value.id in bound
                    and _private(node.attr) and bound[node.value.id] != name):
                found.append(f"{name}:{node.lineno} uses {bound[node.value.id]}.{node.attr}")
    return found


def _private(name: str) -> bool:
    return name.startswith("_") and not (name.startswith("__") and name.endswith("__"))


def _allowed(module: str, allowed: set[str]) -> bool:
    return any(module == a or module.startswith(a + ".") for a in allowed)


def script_paths() -> dict[str, Path]:
    return {f"scripts.{p.stem}": p for p in sorted((ROOT / "scripts").glob("*.py"))}


# -- the rules ---------------------------------------------------------------------


def test_no_import_cycles():
    edges, _ = graph()
    assert cycles(edges) == []


def test_no_module_imports_a_layer_above_its_own():
    edges, _ = graph()
    spec = layers()
    unplaced = sorted(m for m in edges if layer_of(m, spec) is None)
    assert unplaced == [], "every module has a layer in docs/architecture.md"
    assert upward(edges, spec) == []


def test_only_the_index_module_imports_faiss_and_only_the_store_and_baselines_import_sqlite3():
    _, found = graph()
    faiss = sorted({i.importer for i in found if i.target == "faiss"})
    sqlite = sorted({i.importer for i in found if i.target == "sqlite3"})
    assert faiss == sorted(FAISS_MODULES)
    assert sqlite and all(_allowed(m, SQLITE_MODULES) for m in sqlite), sqlite


def test_no_module_imports_another_modules_private_name():
    assert private_imports({**project_modules(), **script_paths()}) == []


def test_the_projects_imports_sit_at_the_top_outside_the_entry_points():
    _, found = graph()
    late = sorted(f"{i.importer}:{i.line} {i.target}" for i in found
                  if i.in_function and i.target.startswith("recommender") and i.importer not in ENTRY_POINTS)
    assert late == []


def test_the_checker_finds_what_it_looks_for(tmp_path):
    """A cycle, an upward import, a late import and a private name in a made-up package are all reported."""
    package = tmp_path / "recommender"
    (package / "low").mkdir(parents=True)
    (package / "__init__.py").write_text("")
    (package / "low" / "__init__.py").write_text("")
    (package / "low" / "a.py").write_text("from recommender.high import b\n_secret = 1\n")
    (package / "high.py").write_text("from recommender.low.a import _secret\n"
                                     "def f():\n    import recommender.low.a\n")
    (package / "b.py").write_text("from typing import TYPE_CHECKING\nif TYPE_CHECKING:\n"
                                  "    from recommender.high import x\n")
    modules = project_modules(package)
    edges, found = graph(modules)
    assert cycles(edges) == [["recommender.high", "recommender.low.a"]]
    assert "recommender.high" not in edges["recommender.b"]  # TYPE_CHECKING does not count
    spec = layers("## Layers\n```\n0: low, b\n1: high\n```\n")
    assert upward(edges, spec) == [("recommender.low.a", "recommender.high")]
    assert [i.line for i in found if i.in_function] == [3]
    assert private_imports({"recommender.high": package / "high.py"}, modules) == [
        "recommender.high:1 imports recommender.low.a._secret"]


# -- the report ----------------------------------------------------------------------


def report(show_graph: bool) -> str:
    modules = project_modules()
    edges, found = graph(modules)
    lines = ["modules:"]
    for name, path in modules.items():
        size = len(path.read_text(encoding="utf-8").splitlines())
        lines.append(f"  {'  ' * (name.count('.') - 1)}{name.rpartition('.')[2]:<24} {size:5d} lines")
    if show_graph:
        lines.append("imports (at run time):")
        lines += [f"  {a} -> {', '.join(sorted(b))}" for a, b in edges.items() if b]
    found_cycles = cycles(edges)
    lines.append(f"cycles: {len(found_cycles)}")
    lines += [f"  {' <-> '.join(c)}" for c in found_cycles]
    try:
        spec = layers()
    except (IndexError, OSError):
        lines.append("layers: none written in docs/architecture.md")
    else:
        up = upward(edges, spec)
        lines.append(f"upward imports: {len(up)}")
        lines += [f"  {a} -> {b}" for a, b in up]
        unplaced = sorted(m for m in modules if layer_of(m, spec) is None)
        if unplaced:
            lines.append(f"modules without a layer: {', '.join(unplaced)}")
    late = [i for i in found if i.in_function and i.target.startswith("recommender") and i.importer not in ENTRY_POINTS]
    lines.append(f"project imports inside functions (outside {', '.join(sorted(ENTRY_POINTS))}): {len(late)}")
    lines += [f"  {i.importer}:{i.line} -> {i.target}" for i in late]
    private = private_imports({**modules, **script_paths()})
    lines.append(f"private names imported across modules: {len(private)}")
    lines += [f"  {p}" for p in private]
    faiss = sorted({i.importer for i in found if i.target == "faiss"})
    sqlite = sorted({i.importer for i in found if i.target == "sqlite3"})
    lines.append(f"import faiss: {', '.join(faiss)}")
    lines.append(f"import sqlite3: {', '.join(sqlite)}")
    return "\n".join(lines)


if __name__ == "__main__":
    sys.path.insert(0, str(ROOT))
    print(report("--graph" in sys.argv))
