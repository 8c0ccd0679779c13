"""No import cycle anywhere; the core imports no task; tasks/common imports no task folder (tests/import_graph.py)."""
import import_graph


def test_no_import_cycle_and_clean_layering():
    g = import_graph.edges()
    assert import_graph.cycles(g) == []
    assert import_graph.violations(g) == []
    assert "tasks.classification.peers" in g["tasks.methods"]          # the checker sees real edges
    assert "rlcf.engine" in g["rlcf.methods"]


def test_the_checker_finds_a_cycle():
    assert import_graph.cycles({"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}) == [["a", "b", "c"]]
    assert import_graph.violations({"rlcf.x": {"tasks.y"}, "tasks.common.z": {"tasks.world.models"}}) == [
        "core module rlcf.x imports tasks.y", "tasks.common.z (tasks/common) imports the task module tasks.world.models"]
