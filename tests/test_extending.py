"""docs/extending.md runs: every ``python`` block of the guide is executed, in order, and its results checked."""
import json
import os
import re
import subprocess
import sys
from pathlib import Path

import torch

import rlcf.methods

REPO = Path(__file__).resolve().parents[1]
GUIDE = REPO / "docs" / "extending.md"


def blocks() -> list[str]:
    return re.findall(r"```python\n(.*?)```", GUIDE.read_text(encoding="utf-8"), flags=re.S)


def test_guide_has_two_worked_examples_of_20_to_60_lines():
    code = blocks()
    assert len(code) == 2
    assert all(20 <= len(b.strip().splitlines()) <= 70 for b in code), [len(b.splitlines()) for b in code]


def _folder_data(root: Path) -> None:
    """``root/mydata/<class>/*.jpg`` (3 classes x 2 images) and the tiny policy / reward checkpoints."""
    import numpy as np
    import torch
    from PIL import Image

    from conftest import make_clip

    rng = np.random.default_rng(0)
    for c, colour in {"cat": (200, 60, 60), "dog": (60, 200, 60), "tree_frog": (60, 60, 200)}.items():
        (root / "mydata" / c).mkdir(parents=True)
        for i in range(2):
            pixels = (rng.normal(0, 30, (40, 48, 3)) + colour).clip(0, 255).astype("uint8")
            Image.fromarray(pixels).save(root / "mydata" / c / f"{i}.jpg")
    for name, seed in (("RLCF-Tiny-Test", 0), ("RLCF-Tiny-Reward", 1)):
        torch.save(make_clip(name, seed)[0].state_dict(), root / f"{name}.pt")


def test_new_method_file_reaches_the_registry_and_the_command_line(tmp_path, monkeypatch):
    """The guide's method file, put in a folder of ``tasks.methods`` (as ``tasks/methods/pseudo_label.py`` is) and
    edited nowhere else: ``load_all`` registers it, it adapts and restores, ``rlcf methods`` lists it and ``rlcf run
    classification method=pseudo_label`` runs it."""
    import tasks.methods
    from conftest import CLASSNAMES, make_clip
    from tasks.classification.policies import PromptPolicy

    folder = tmp_path / "methods"
    folder.mkdir()
    (folder / "pseudo_label.py").write_text(blocks()[0], encoding="utf-8")
    monkeypatch.setattr(tasks.methods, "__path__", [*tasks.methods.__path__, str(folder)])
    try:
        assert "pseudo_label" in tasks.methods.load_all()
        cls = rlcf.get_method("pseudo_label")
        clip, _, tok = make_clip()
        policy = PromptPolicy(clip, CLASSNAMES[:3], tok)
        views = torch.randn(16, 3, 32, 32)
        method = cls(policy, None, cls.default_config.updated(selection=0.25))
        out = method(views)
        zs = rlcf.adapt(policy, views, "zeroshot")
        assert not torch.equal(out, zs)                        # it adapted, and restored the prompt after
        assert method.last_info["target"] in (0, 1, 2) and len(method.last_info["losses"]) == 1
        assert torch.equal(rlcf.adapt(policy, views, "zeroshot"), zs)
        assert torch.equal(rlcf.adapt(policy, views, "pseudo_label", selection=0.25), out)
    finally:
        rlcf.methods._REGISTRY.pop("pseudo_label", None)
        sys.modules.pop("tasks.methods.pseudo_label", None)

    _folder_data(tmp_path)
    rlcf_cli = ("import sys, tasks.methods; tasks.methods.__path__.append(sys.argv[1]); "
                "from tasks.command import main; sys.exit(main(sys.argv[2:]))")
    env = {**os.environ, "PYTHONPATH": str(REPO)}

    def rlcf_command(*args: str) -> subprocess.CompletedProcess:
        return subprocess.run([sys.executable, "-c", rlcf_cli, str(folder), *args], capture_output=True, text=True,
                              cwd=tmp_path, env=env, timeout=600)

    listed = rlcf_command("methods")
    assert listed.returncode == 0, listed.stderr
    row = next(line for line in listed.stdout.splitlines() if line.startswith("pseudo_label "))
    assert row.split()[1:4] == ["episodic", "no", "1"] and "Cross-entropy of the confident views" in row
    fix = REPO / "tests" / "fixtures"
    ran = rlcf_command("run", "classification", "method=pseudo_label", "policy=prompt", "data.set_id=folder",
                       "data.root=mydata", "model.arch=RLCF-Tiny-Test", f"model.pretrained={tmp_path}/RLCF-Tiny-Test.pt",
                       f"model.config_file={fix}/RLCF-Tiny-Test.json", "reward.arch=RLCF-Tiny-Reward",
                       f"reward.pretrained={tmp_path}/RLCF-Tiny-Reward.pt",
                       f"reward.config_file={fix}/RLCF-Tiny-Reward.json", "views.n=8", "adapt.steps=1", "adapt.selection=0.25",
                       "run.workers=0", "run.device=cpu", "run.out_dir=out")
    assert ran.returncode == 0, ran.stderr
    records = [json.loads(line) for f in (tmp_path / "out" / "folder").glob("records-*.jsonl")
               for line in f.read_text().splitlines()]
    assert len(records) == 6 and all(len(r["losses"]) == 1 and r["flags"] == [] for r in records)
    assert "| mydata | pseudo_label | prompt | 6 |" in ran.stdout        # the set is named by its folder


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
