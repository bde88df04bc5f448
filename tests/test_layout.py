"""The package layout holds: every module imports, the import graph (module-level and function-local imports
alike) has no cycle, no private name is imported from another module, and the layers point one way
(platform knows nothing of Tune, Flower or the dashboard; the dashboard reads run directories, not the engine)."""

from __future__ import annotations

import ast
import importlib
import pkgutil
from pathlib import Path

import gradprom

ROOT = Path(gradprom.__file__).parent


def modules() -> dict[str, Path]:
    """Every module of the package: dotted name -> file (a package is its __init__.py)."""
    out = {}
    for f in ROOT.rglob("*.py"):
        parts = f.relative_to(ROOT.parent).with_suffix("").parts
        name = ".".join(parts[:-1] if parts[-1] == "__init__" else parts)
        out[name] = f
    return out


def imports_of(name: str, path: Path, known: dict[str, Path]) -> list[tuple[str, list[str]]]:
    """(imported module, names) for every import in the file, wherever it sits, relative ones resolved."""
    pkg = name if path.name == "__init__.py" else name.rpartition(".")[0]
    out = []
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            out += [(a.name, []) for a in node.names if a.name.startswith("gradprom")]
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                parent = pkg.split(".")
                parent = parent[: len(parent) - node.level + 1]
                base = ".".join(parent + ([base] if base else []))
            if not base.startswith("gradprom"):
                continue
            names = [a.name for a in node.names]
            # `from pkg import submodule` imports that submodule
            subs = [f"{base}.{n}" for n in names if f"{base}.{n}" in known]
            out.append((base, [n for n in names if f"{base}.{n}" not in known]))
            out += [(s, []) for s in subs]
    return out


def graph() -> dict[str, set[str]]:
    known = modules()
    g: dict[str, set[str]] = {m: set() for m in known}
    for m, path in known.items():
        for target, _ in imports_of(m, path, known):
            if target in known and target != m:
                g[m].add(target)
    return g


def cycles(g: dict[str, set[str]]) -> list[list[str]]:
    """Strongly connected components with more than one module (Tarjan)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on: set[str] = set()
    out: list[list[str]] = []
    counter = [0]

    def visit(v: str) -> None:
        index[v] = low[v] = counter[0]
        counter[0] += 1
        stack.append(v)
        on.add(v)
        for w in g[v]:
            if w not in index:
                visit(w)
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
                out.append(sorted(comp))

    for v in sorted(g):
        if v not in index:
            visit(v)
    return out


def test_every_module_imports():
    failed = {}
    for m in pkgutil.walk_packages(gradprom.__path__, "gradprom."):
        try:
            importlib.import_module(m.name)
        except Exception as e:  # noqa: BLE001 - collected and reported below
            failed[m.name] = f"{type(e).__name__}: {e}"
    assert not failed, failed


def test_no_import_cycle():
    assert cycles(graph()) == []


def test_the_cycle_check_finds_a_cycle():
    # the check itself must be able to fail
    assert cycles({"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}) == [["a", "b", "c"]]


def test_no_private_name_imported_from_another_module():
    known = modules()
    bad = [f"{m} imports {n} from {target}" for m, path in known.items()
           for target, names in imports_of(m, path, known) for n in names
           if n.startswith("_") and not n.startswith("__") and target != m]
    assert bad == []


def test_layers_point_one_way():
    g = graph()
    platform = [m for m in g if m.startswith("gradprom.platform")]
    outward = {m: sorted(t for t in g[m] if not t.startswith("gradprom.platform") and t != "gradprom")
               for m in platform}
    assert {m: t for m, t in outward.items() if t} == {}
    dashboard = [m for m in g if m.startswith("gradprom.dashboard")]
    engine = {m: sorted(t for t in g[m] if t.startswith("gradprom.platform") and t != "gradprom.platform.errors")
              for m in dashboard}
    assert {m: t for m, t in engine.items() if t} == {}
