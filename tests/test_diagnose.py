"""``rlcf diagnose``: the headroom measurements, by hand on a 4-view / 4-class sample, the one-line reading's
branches, and the command on a tiny folder dataset against a direct open_clip computation."""
from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from conftest import FIXTURES, make_clip
from tasks.classification.diagnose import ROWS, diagnose_sample, reading, summarize, table
from tasks.classification.views import ViewTransform
from tasks.command import main as rlcf_main
from tasks.common.clip import zero_shot_classifier

# 4 views x 4 classes. Entropies: view 2 (0.06) < view 1 (0.64) < view 0 (0.99) < view 3 (uniform, 1.39), so with
# selection 0.5 the confident views are [2, 1].
POLICY = torch.tensor([[2.0, 1.5, 0.0, -1.0],     # clean view: pred 0, top-2 {0, 1}
                       [0.0, 4.0, 5.0, 0.0],      # top-2 {2, 1}
                       [0.5, 0.0, 6.0, -0.5],     # top-2 {2, 0}
                       [0.0, 0.0, 0.0, 0.0]])
TEACHER = torch.tensor([[0.0, 3.0, 0.0, 0.0],     # clean: teacher says 1; among {0, 1} also 1
                        [0.0, 2.0, 1.0, 0.0],     # among view 1's {2, 1}: 1
                        [3.0, 0.0, 1.0, 0.0],     # among view 2's {2, 0}: 0
                        [0.0, 0.0, 0.0, 0.0]])


def test_one_sample_by_hand():
    r = diagnose_sample(POLICY, TEACHER, label=1, k=2, selection=0.5)
    assert r["selected"] == [2, 1]
    assert r["pred"] == 0 and r["teacher"] == 1
    assert sorted(r["topk"]) == [0, 1]
    assert r["rerank"] == 1
    # picks in confidence order: view 2 -> 0, view 1 -> 1: a tie, won by the most confident view's pick
    assert r["rerank_views"] == 0
    # the policy's argmax on both confident views is 2
    assert r["vote"] == 2
    # the teacher's mean softmax over the 4 views: class 1 (0.442) > class 0 (0.296)
    assert r["teacher_views"] == 1
    e = torch.exp(torch.tensor([2.0, 1.5, 0.0, -1.0]))
    assert r["confidence"] == pytest.approx(float(e[0] / e.sum()), abs=1e-6)


def test_a_majority_of_picks_wins_over_the_most_confident_view():
    # three confident views: picks 0, 1, 1 -> 1
    policy = torch.tensor([[0.0, 0.0, 9.0], [0.5, 0.4, 0.0], [0.0, 7.5, 7.0], [7.0, 7.2, 0.0]])
    teacher = torch.tensor([[0.0, 0.0, 1.0], [1.0, 0.0, 0.0], [0.0, 1.0, 0.0], [0.0, 1.0, 0.0]])
    r = diagnose_sample(policy, teacher, label=1, k=2, selection=0.75)
    assert r["selected"][0] == 0 and sorted(r["selected"]) == [0, 2, 3]
    # view 0's top-2 is {2, 0 or 1}: the teacher picks 2; views 2 and 3 pick 1
    assert r["rerank_views"] == 1


def test_summarize_counts_each_measure_over_the_records():
    recs = [
        {"label": 1, "pred": 1, "confidence": 0.9, "teacher": 1, "topk": [1, 0], "rerank": 1, "rerank_views": 1,
         "vote": 1, "teacher_views": 1},
        {"label": 2, "pred": 0, "confidence": 0.6, "teacher": 2, "topk": [0, 2], "rerank": 2, "rerank_views": 0,
         "vote": 2, "teacher_views": 2},
        {"label": 0, "pred": 1, "confidence": 0.8, "teacher": 1, "topk": [1, 2], "rerank": 1, "rerank_views": 1,
         "vote": 1, "teacher_views": 0},
        {"label": 0, "pred": 0, "confidence": 0.7, "teacher": 0, "topk": [0, 1], "rerank": 0, "rerank_views": 0,
         "vote": 1, "teacher_views": 0},
        {"error": "unreadable image"},
    ]
    s = summarize(recs)
    assert s["n"] == 4
    assert s["top1"] == 50.0 and s["teacher"] == 75.0 and s["topk"] == 75.0
    assert s["rerank"] == 75.0 and s["rerank_views"] == 50.0 and s["vote"] == 50.0 and s["teacher_views"] == 100.0
    # ECE, 20 bins: every confidence in its own bin; |acc - conf| = 0.1, 0.6, 0.8, 0.3 -> mean 0.45
    assert s["ece"] == pytest.approx(45.0)
    assert set(key for key, _ in ROWS) <= set(s)
    md = table({"val": s, "sketch": s})
    assert md.splitlines()[0] == "| measure | val (n=4) | sketch (n=4) |"
    assert len(md.splitlines()) == 2 + len(ROWS)


def _stats(top1, teacher, topk, rerank_views, vote):
    return {"top1": top1, "teacher": teacher, "topk": topk, "rerank_views": rerank_views, "vote": vote}


@pytest.mark.parametrize("stats, start", [
    ({"a": _stats(60, 61, 90, 70, 65), "b": _stats(50, 51, 80, 60, 55)}, "reading: the teacher is not stronger"),
    ({"a": _stats(60, 80, 90, 70, 40), "b": _stats(50, 70, 80, 60, 45)}, "reading: confident views mislead on every set"),
    ({"a": _stats(60, 80, 62, 61, 60), "b": _stats(50, 70, 53, 51, 50)}, "reading: the right class is rarely"),
    ({"a": _stats(60, 80, 80, 61, 60), "b": _stats(50, 70, 80, 50, 52)}, "reading: the reward's re-ranking"),
    ({"a": _stats(60, 80, 80, 70, 62), "b": _stats(50, 70, 80, 54, 52)}, "reading: headroom for RLCF"),
])
def test_the_reading_names_the_first_finding_that_holds(stats, start):
    line = reading(stats)
    assert line.startswith(start), line
    assert "\n" not in line


def test_the_headroom_reading_gives_the_mean_gain():
    line = reading({"a": _stats(60, 80, 80, 70, 62), "b": _stats(50, 70, 80, 54, 52)})
    assert "+7.0 points on average" in line and "most on a: +10.0" in line


@pytest.fixture(scope="module")
def folder(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("diag")
    rng = np.random.default_rng(0)
    for name, colour in {"cat": (200, 60, 60), "dog": (60, 200, 60), "tree_frog": (60, 60, 200)}.items():
        (root / "data" / name).mkdir(parents=True)
        for i in range(3):
            pixels = (rng.normal(0, 30, (36, 40, 3)) + colour).clip(0, 255).astype("uint8")
            Image.fromarray(pixels).save(root / "data" / name / f"{i}.png")
    for file, seed in (("policy.pt", 0), ("reward.pt", 1)):
        model, _, _ = make_clip("RLCF-Tiny-Test", seed)
        torch.save(model.state_dict(), root / file)
    return root


def _argv(folder: Path, out: Path, *extra: str) -> list[str]:
    """``rlcf diagnose`` on the fixture folder with the tiny policy and reward."""
    cfg = FIXTURES / "RLCF-Tiny-Test.json"
    return ["diagnose", "data.set_id=folder", f"data.root={folder / 'data'}", "policy=encoder",
            "model.arch=RLCF-Tiny-Test", f"model.pretrained={folder / 'policy.pt'}", f"model.config_file={cfg}",
            "reward.arch=RLCF-Tiny-Test", f"reward.pretrained={folder / 'reward.pt'}", f"reward.config_file={cfg}",
            "prompt.class_template=a photo of a {}.", "run.workers=0", "run.device=cpu", f"run.out_dir={out}", *extra]


def test_the_command_prints_the_table_and_equals_a_direct_computation(folder, capsys):
    out = folder / "out"
    argv = _argv(folder, out, "views.n=8", "adapt.k=2", "adapt.selection=0.25")
    assert rlcf_main(argv) == 0
    printed = capsys.readouterr().out
    assert "| measure | folder (n=9) |" in printed and "\nreading: " in printed
    stats = json.loads((out / "diagnose.json").read_text())["folder"]

    # the reference: open_clip directly, the same seeded views
    from tasks.classification.datasets import build_dataset

    ds = build_dataset("folder", str(folder / "data"))
    recs = []
    for i in range(len(ds)):
        views = ViewTransform(8, 32)(ds.load(i), seed=i)
        logits = []
        for seed in (0, 1):
            clip, _, tok = make_clip("RLCF-Tiny-Test", seed)
            clip.eval()
            with torch.no_grad():
                f = torch.nn.functional.normalize(clip.encode_image(views).float(), dim=-1)
                tf = zero_shot_classifier(clip, tok, [n.replace("_", " ") for n in ds.classnames], ["a photo of a {}."])
                logits.append(clip.logit_scale.exp() * f @ tf.T)
        recs.append(diagnose_sample(logits[0], logits[1], ds.items[i][1], k=2, selection=0.25))
    ref = summarize(recs)
    for key, _ in ROWS:
        assert stats[key] == pytest.approx(ref[key], abs=1e-6 if key != "ece" else 1e-3), key   # ECE: float32 logits
    assert stats["n"] == 9 and not math.isnan(stats["top1"])
    # resumed: a second call reads the records and computes nothing new
    assert rlcf_main(argv) == 0
    assert json.loads((out / "diagnose.json").read_text())["folder"] == stats


def test_run_limit_takes_every_class_in_turn(folder, capsys):
    """The folder is class-sorted (3 cats, 3 dogs, 3 frogs): run.limit=3 takes one of each, not the first 3 cats."""
    out = folder / "out-limit"
    assert rlcf_main(_argv(folder, out, "views.n=4", "run.limit=3")) == 0
    recs = [json.loads(line) for f in (out / "folder").glob("records-*.jsonl") for line in f.read_text().splitlines()]
    assert sorted(r["label"] for r in recs) == [0, 1, 2]
