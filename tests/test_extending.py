"""docs/extending.md runs: every ``python`` block of the guide is executed, in order, and its results checked."""
import re
from pathlib import Path

import rlcf.methods

GUIDE = Path(__file__).resolve().parents[1] / "docs" / "extending.md"


def blocks() -> list[str]:
    return re.findall(r"```python\n(.*?)```", GUIDE.read_text(encoding="utf-8"), flags=re.S)


def test_guide_has_two_worked_examples_of_20_to_60_lines():
    code = blocks()
    assert len(code) == 2
    assert all(20 <= len(b.strip().splitlines()) <= 70 for b in code), [len(b.splitlines()) for b in code]


def test_new_method_example_runs(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    ns: dict = {}
    try:
        exec(compile(blocks()[0], "docs/extending.md (new method)", "exec"), ns)
        assert "pseudo_label" in rlcf.list_methods()
        method = ns["PseudoLabel"](ns["policy"], None, ns["PseudoLabel"].default_config.updated(selection=0.25))
        out = method(ns["views"])
        zs = rlcf.adapt(ns["policy"], ns["views"], "zeroshot")
        assert not ns["torch"].equal(out, zs)                  # it adapted, and restored the prompt after
        assert method.last_info["target"] in (0, 1, 2) and len(method.last_info["losses"]) == 1
        assert ns["torch"].equal(rlcf.adapt(ns["policy"], ns["views"], "zeroshot"), zs)
    finally:
        rlcf.methods._REGISTRY.pop("pseudo_label", None)


def test_new_task_example_runs(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    ns: dict = {}
    exec(compile(blocks()[1], "docs/extending.md (new task)", "exec"), ns)
    summary = ns["summary"]
    assert summary["n"] == 6 and summary["errors"] == 0
    assert summary["metrics"]["accuracy"] == 100.0            # the reward teaches the dominant colour
    recs = (tmp_path / "output" / "extending-colours" / "records-0.jsonl").read_text().splitlines()
    assert len(recs) == 6
    # the head trained during each episode and was restored after it
    head = ns["method"].policy.head
    assert all(p.grad is None for p in head.parameters())
