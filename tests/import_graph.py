"""Walk the project's imports and check the layering, between modules and between packages.

    python tests/import_graph.py          # prints the cycles and layering violations; exit 1 if any

Every import statement is an edge: at module level, inside functions and under ``if TYPE_CHECKING:``.
``from package import name`` counts as an import of ``package.name`` when that is a module, else of the
package itself.

Rules: no import cycle between the modules of ``rlcf`` and ``tasks``, and none between their packages (a
package is a folder: ``tasks.classification`` holds ``tasks/classification/*.py``, its sub-folder
``tasks.classification.datasets`` is a package of its own; ``tasks`` holds ``tasks/*.py``); ``rlcf`` (the
core) imports no ``tasks`` module; ``tasks.common`` imports no task folder (``tasks.classification``,
``tasks.world``, ...).
"""
from __future__ import annotations

import ast
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
PACKAGES = ("rlcf", "tasks")


def modules() -> dict[str, Path]:
    out = {}
    for pkg in PACKAGES:
        for path in sorted((ROOT / pkg).rglob("*.py")):
            parts = list(path.relative_to(ROOT).with_suffix("").parts)
            if parts[-1] == "__init__":
                parts = parts[:-1]
            out[".".join(parts)] = path
    return out


def _resolve(mod: str, is_pkg: bool, level: int, name: str | None) -> str:
    if level == 0:
        return name or ""
    base = mod.split(".") if is_pkg else mod.split(".")[:-1]
    base = base[:len(base) - (level - 1)]
    return ".".join(base + ([name] if name else []))


def imports_of(mod: str, source: str, is_pkg: bool, mods: dict[str, Path]) -> set[str]:
    """The project modules that the module ``mod`` (its ``source``) imports, wherever the import statement is."""
    out = set()
    for node in ast.walk(ast.parse(source)):
        targets = []
        if isinstance(node, ast.Import):
            targets = [a.name for a in node.names]
        elif isinstance(node, ast.ImportFrom):
            base = _resolve(mod, is_pkg, node.level, node.module)
            for a in node.names:
                sub = f"{base}.{a.name}"
                targets.append(sub if sub in mods else base)
        for t in targets:
            while t and t not in mods:   # `import tasks.world.models` -> that module; unknown -> its parent
                t = t.rsplit(".", 1)[0] if "." in t else ""
            if t and t != mod:
                out.add(t)
    return out


def edges() -> dict[str, set[str]]:
    mods = modules()
    return {mod: imports_of(mod, path.read_text(encoding="utf-8"), path.name == "__init__.py", mods)
            for mod, path in mods.items()}


def package_of(mod: str, mods: dict[str, Path] | None = None) -> str:
    """The package (folder) a module belongs to: itself for a package's ``__init__``, else its parent."""
    mods = modules() if mods is None else mods
    return mod if mods[mod].name == "__init__.py" else mod.rsplit(".", 1)[0]


def package_edges(graph: dict[str, set[str]] | None = None, mods: dict[str, Path] | None = None) -> dict[str, set[str]]:
    """Package -> the packages its modules import (itself left out)."""
    mods = modules() if mods is None else mods
    graph = edges() if graph is None else graph
    out: dict[str, set[str]] = {package_of(m, mods): set() for m in mods}
    for mod, deps in graph.items():
        src = package_of(mod, mods)
        out[src] |= {package_of(d, mods) for d in deps} - {src}
    return out


def cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """Strongly connected components with more than one node (Tarjan): modules, or packages."""
    index, low, stack, on, out, counter = {}, {}, [], set(), [], [0]

    def visit(v: str) -> None:
        index[v] = low[v] = counter[0]
        counter[0] += 1
        stack.append(v)
        on.add(v)
        for w in graph[v]:
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

    sys.setrecursionlimit(10000)
    for v in graph:
        if v not in index:
            visit(v)
    return out


def violations(graph: dict[str, set[str]]) -> list[str]:
    out = []
    for mod, deps in graph.items():
        for d in sorted(deps):
            if mod.startswith("rlcf") and d.startswith("tasks"):
                out.append(f"core module {mod} imports {d}")
            if mod.startswith("tasks.common") and d.startswith("tasks.") and not d.startswith("tasks.common") \
                    and d != "tasks":
                out.append(f"{mod} (tasks/common) imports the task module {d}")
    return out


def main() -> int:
    g = edges()
    pg = package_edges(g)
    cyc, pcyc = cycles(g), cycles(pg)
    bad = violations(g)
    for c in cyc:
        print("module cycle:", " <-> ".join(c))
    for c in pcyc:
        print("package cycle:", " <-> ".join(c))
    for v in bad:
        print("layering:", v)
    print(f"{len(g)} modules, {sum(len(d) for d in g.values())} imports: {len(cyc)} module cycles; "
          f"{len(pg)} packages, {sum(len(d) for d in pg.values())} package imports: {len(pcyc)} package cycles; "
          f"{len(bad)} layering violations")
    return 1 if cyc or pcyc or bad else 0


if __name__ == "__main__":
    sys.exit(main())
