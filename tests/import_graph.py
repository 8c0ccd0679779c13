"""Walk the project's imports (module level and inside functions) and check the layering.

    python tests/import_graph.py          # prints the cycles and layering violations; exit 1 if any

Rules: no import cycle anywhere in ``rlcf`` and ``tasks``; ``rlcf`` (the core) imports no ``tasks``
module; ``tasks.common`` imports no task folder (``tasks.classification``, ``tasks.world``, ...).
``from package import name`` counts as an import of ``package.name`` when that is a module, else of the
package itself.
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


def edges() -> dict[str, set[str]]:
    mods = modules()
    graph: dict[str, set[str]] = {m: set() for m in mods}
    for mod, path in mods.items():
        is_pkg = path.name == "__init__.py"
        tree = ast.parse(path.read_text(encoding="utf-8"))
        typing_only = {id(n) for t in ast.walk(tree) if isinstance(t, ast.If) and "TYPE_CHECKING" in ast.unparse(t.test)
                       for b in t.body for n in ast.walk(b)}   # `if TYPE_CHECKING:` imports never run
        for node in ast.walk(tree):
            if id(node) in typing_only:
                continue
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
                    graph[mod].add(t)
    return graph


def cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """Strongly connected components with more than one module (Tarjan)."""
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
    cyc = cycles(g)
    bad = violations(g)
    for c in cyc:
        print("import cycle:", " <-> ".join(c))
    for v in bad:
        print("layering:", v)
    print(f"{len(g)} modules, {sum(len(d) for d in g.values())} imports: {len(cyc)} cycles, {len(bad)} layering "
          "violations")
    return 1 if cyc or bad else 0


if __name__ == "__main__":
    sys.exit(main())
