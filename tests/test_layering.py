"""No import cycle between modules or packages; the core imports no task; tasks/common imports no task folder
(tests/import_graph.py)."""
from pathlib import Path

import import_graph


def test_no_import_cycle_and_clean_layering():
    g = import_graph.edges()
    assert import_graph.cycles(g) == []
    assert import_graph.cycles(import_graph.package_edges(g)) == []
    assert import_graph.violations(g) == []
    assert "rlcf" in g["tasks.methods.ctpt"]                           # the checker sees real edges
    assert "rlcf.engine" in g["rlcf.methods"]
    assert "rlcf.policy" in g["rlcf.forward"]


def test_the_checker_finds_a_cycle():
    assert import_graph.cycles({"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}) == [["a", "b", "c"]]
    assert import_graph.violations({"rlcf.x": {"tasks.y"}, "tasks.common.z": {"tasks.world.models"}}) == [
        "core module rlcf.x imports tasks.y", "tasks.common.z (tasks/common) imports the task module tasks.world.models"]


def test_the_checker_finds_a_package_cycle_and_counts_every_import():
    """Two packages whose modules import each other form a package cycle although no module cycle exists; imports
    under ``if TYPE_CHECKING:`` and inside functions are edges."""
    mods = {"p": Path("p/__init__.py"), "p.a": Path("p/a.py"), "p.b": Path("p/b.py"), "q": Path("q/__init__.py"),
            "q.c": Path("q/c.py")}
    graph = {"p": set(), "p.a": {"q.c"}, "p.b": set(), "q": set(), "q.c": {"p.b"}}
    assert import_graph.cycles(graph) == []
    assert import_graph.package_edges(graph, mods) == {"p": {"q"}, "q": {"p"}}
    assert import_graph.cycles(import_graph.package_edges(graph, mods)) == [["p", "q"]]
    mods = {"rlcf": Path("rlcf/__init__.py"), "rlcf.engine": Path("rlcf/engine.py"), "rlcf.policy": Path("rlcf/policy.py"),
            "rlcf.losses": Path("rlcf/losses.py")}
    source = ("from typing import TYPE_CHECKING\nfrom .losses import entropy\nif TYPE_CHECKING:\n"
              "    from .engine import Method\n\ndef f():\n    from .policy import Episode\n")
    assert import_graph.imports_of("rlcf.x", source, False, mods) == {"rlcf.losses", "rlcf.engine", "rlcf.policy"}
