"""The main job's negative control (RLCF with the reward negated) and the dev-split learning-rate rule."""
import json

import numpy as np
import pytest

from tasks import demo
from tasks.demo.control import NEGATED, control_ci, markdown, paired_difference
from tasks.demo.tune import choose


def test_paired_difference_by_hand():
    working = [True, True, False, True, True, False, True, True]
    broken = [False, True, False, False, True, False, True, False]
    d = paired_difference(working, broken)
    assert d["diff"] == pytest.approx(37.5) and d["n"] == 8          # 3 of 8 samples: right only when working
    lo, hi = d["ci95"]
    assert 0.0 <= lo <= 37.5 <= hi <= 100.0
    same = paired_difference(working, working)
    assert same["diff"] == 0.0 and same["ci95"] == [0.0, 0.0]
    # a consistent small gain the paired CI sees: 10 of 200 samples flipped right, none wrong
    rng = np.random.default_rng(0)
    base = rng.random(200) < 0.5
    better = base.copy()
    better[np.flatnonzero(~base)[:10]] = True
    assert paired_difference(better, base)["ci95"][0] > 0


def test_the_lr_rule_takes_the_best_mean_of_the_dev_splits_and_the_smaller_lr_on_a_tie():
    scores = {1e-3: {"dev": 70.0, "dev_shift": 39.8}, 3e-3: {"dev": 69.0, "dev_shift": 42.0},
              1e-2: {"dev": 60.0, "dev_shift": 50.6}, 3e-2: {"dev": 40.0, "dev_shift": 30.0}}
    assert choose(scores) == 3e-3                   # means 54.9, 55.5, 55.3, 35.0: 55.3 is within 0.5 of 55.5
    assert choose({**scores, 1e-3: {"dev": 70.0, "dev_shift": 40.6}}) == 1e-3   # 55.3: the smaller lr wins
    assert choose({1e-2: {"dev": 60.0, "dev_shift": 53.0}, 3e-3: scores[3e-3]}) == 1e-2   # 56.5 vs 55.5


def test_the_main_job_runs_its_negative_control_and_reports_it(tmp_path, monkeypatch, caplog, capsys):
    import logging

    monkeypatch.setenv("DATA_ROOT", str(tmp_path / "data"))
    runner_log = logging.getLogger("tasks.common.runner")
    before = runner_log.level
    with caplog.at_level(logging.INFO):
        results = demo.main(["--placeholder", "--limit", "3", "--control", "2", "--out", str(tmp_path / "out")])
    # the console shows the stages, not the runner's per-cell lines (those come with --verbose); the level is restored
    assert any(r.name == "tasks.demo" and "stage:" in r.getMessage() for r in caplog.records)
    assert not [r for r in caplog.records if r.name == "tasks.common.runner" and r.levelno < logging.WARNING]
    assert runner_log.level == before
    assert markdown(results["control"]).rstrip() in capsys.readouterr().out   # the verdict on the console too
    c = results["control"]
    ood = results["ood"]
    assert c["n"] == 2 * len(ood) and c["per_split"] == 2 and c["override"] == NEGATED
    out = tmp_path / "out" / "placeholder"
    for split in ood:   # the control's records: the same first samples of the seeded order, the reward negated
        recs = [json.loads(line) for f in (out / "control" / split).glob("records-*.jsonl")
                for line in f.read_text().splitlines()]
        main = [json.loads(line) for f in (out / "rlcf-tune" / split).glob("records-*.jsonl")
                for line in f.read_text().splitlines()]
        assert len(recs) == 2 and {r["index"] for r in recs} <= {r["index"] for r in main}
        assert all(max(r["mean_reward"]) <= 0 for r in recs)      # CLIPScore x -2.5, every step
        assert all(min(r["mean_reward"]) >= 0 for r in main)
    assert 0.0 <= c["changed"] <= 100.0 and c["changed_n"] == 3 * len(ood)
    # the true class's probability, paired on the same samples, from each record's label_prob
    pairs = []
    for split in ood:
        main = {r["index"]: r for f in (out / "rlcf-tune" / split).glob("records-*.jsonl")
                for r in map(json.loads, f.read_text().splitlines())}
        for f in (out / "control" / split).glob("records-*.jsonl"):
            for r in map(json.loads, f.read_text().splitlines()):
                pairs.append((main[r["index"]]["label_prob"], r["label_prob"]))
    assert c["prob"]["n"] == len(pairs) == c["n"]
    assert c["prob"]["diff"] == pytest.approx(100 * float(np.mean([a - b for a, b in pairs])))
    assert c["prob"]["working"] == pytest.approx(100 * float(np.mean([a for a, _ in pairs])))
    assert control_ci(c) == ("true-class probability", c["prob"]["ci95"])
    assert control_ci({k: v for k, v in c.items() if k != "prob"}) == ("top-1", c["ci95"])
    saved = json.loads((out / "results.json").read_text())
    assert saved["control"] == json.loads(json.dumps(c))
    assert "Negative control (6 OOD samples, 2 per split)" in (out / "results.md").read_text()
    assert markdown(c).startswith("Negative control")


def test_a_record_carries_the_prediction_s_probability_of_the_true_class():
    from types import SimpleNamespace

    import torch

    from tasks.classification.task import ClassificationTask

    me = SimpleNamespace(method=SimpleNamespace(precision="fp32"), precisions={}, save_logits=False)
    logits = torch.tensor([2.0, 0.5, -1.0, 1.0])
    rec = ClassificationTask._record(me, 3, logits, {})
    assert rec["pred"] == 0 and rec["label_prob"] == pytest.approx(float(torch.softmax(logits, -1)[3]))
    assert "label_prob" not in ClassificationTask._record(me, -1, logits, {})   # no label: nothing to score
