"""The main job's analysis (tasks.world.report): paired per-split gains, changed predictions, ECE, the share of the
teacher's gain, the seeds table, the figures."""
import numpy as np
import pytest

from tasks.world import report


def _recs(preds, labels, conf=0.9):
    return [{"index": i, "label": y, "pred": p, "confidence": conf} for i, (p, y) in enumerate(zip(preds, labels))]


def test_split_stats_counts_changed_predictions_and_pairs_the_gain():
    labels = [0, 1, 2, 3, 0, 1, 2, 3]
    zero = _recs([0, 0, 0, 0, 0, 1, 2, 3], labels)          # right: 0, 4, 5, 6, 7
    ours = _recs([0, 1, 2, 0, 1, 1, 2, 3], labels)          # right: 0, 1, 2, 5, 6, 7; 4 turned wrong
    s = report.split_stats(ours, zero, "val")
    assert s["wrong_to_right"] == 2 and s["right_to_wrong"] == 1
    assert s["top1"] == pytest.approx(75.0) and s["gain"] == pytest.approx(12.5)
    assert s["gain_ci95"][0] <= s["gain"] <= s["gain_ci95"][1]
    assert 0 <= s["ece"] <= 100 and s["n"] == 8 and s["errors"] == 0
    broken = [dict(r) for r in ours]
    broken[1] = {"index": 1, "error": "boom"}
    b = report.split_stats(broken, zero, "val")              # an errored sample leaves both rows of the pair
    assert b["errors"] == 1 and b["n"] == 7 and b["wrong_to_right"] == 1
    with pytest.raises(ValueError, match="different samples"):
        report.split_stats(ours[::-1], zero, "val")


def _results(gains):
    splits, ood = ["val", "v2"], ["v2"]
    rows = {}
    for label, (top, gain) in gains.items():
        cell = {"top1": top, "ci95": [top - 1, top + 1], "n": 10, "errors": 0, "ece": 5.0}
        if gain is not None:
            cell.update(gain=gain, gain_ci95=[gain - 1, gain + 1], wrong_to_right=3, right_to_wrong=1)
        o = {"top1": top, "ci95": [top - 1, top + 1]} | ({"gain": gain, "gain_ci95": [gain - 1, gain + 1]}
                                                        if gain is not None else {})
        rows[label] = {"val": cell, "v2": cell, "ood_avg": o}
    return {"splits": splits, "ood": ood, "rows": rows}


def test_table_says_what_share_of_the_teachers_gain_each_row_captures():
    res = _results({"CLIP policy (zero-shot)": (50, None), "CLIP reward (zero-shot, teacher)": (70, 20.0),
                    "RLCF (encoder)": (55, 5.0)})
    md = report.markdown(res)
    assert "| RLCF (encoder) |" in md and "| 25% |" in md               # 5 of the teacher's 20 points
    assert "| RLCF (encoder) | v2 | 55.0 | +5.0 (+4.0 to +6.0) | 5.0 | 3 | 1 |" in md


def test_seeds_table_gives_mean_range_and_every_seeds_paired_gain():
    per_seed = {0: _results({"CLIP policy (zero-shot)": (50, None), "CLIP reward (zero-shot, teacher)": (70, 20.0),
                             "RLCF (encoder)": (55, 5.0)}),
                1: _results({"CLIP policy (zero-shot)": (40, None), "CLIP reward (zero-shot, teacher)": (70, 30.0),
                             "RLCF (encoder)": (43, 3.0)})}
    md = report.seeds_markdown(per_seed)
    row = next(line for line in md.splitlines() if line.startswith("| RLCF (encoder)"))
    assert "49.0 (43.0-55.0)" in row and "+5.0 (+4.0 to +6.0); +3.0 (+2.0 to +4.0)" in row and "25%, 10%" in row


def test_reliability_bins_and_figures(tmp_path):
    from PIL import Image

    rng = np.random.default_rng(0)
    labels = rng.integers(0, 3, 60).tolist()
    recs = [{"index": i, "label": y, "pred": y if i % 3 else (y + 1) % 3, "confidence": float(c)}
            for i, (y, c) in enumerate(zip(labels, rng.uniform(0.3, 1.0, 60)))]
    mc, acc, cnt = report.reliability(recs, 10)
    assert cnt.sum() == 60 and np.nanmax(acc) <= 1 and np.all(np.isnan(mc) == (cnt == 0))
    res = _results({"CLIP policy (zero-shot)": (50, None), "RLCF (encoder)": (55, 5.0)})
    per_row = {k: {"val": recs, "v2": recs} for k in res["rows"]}
    report.chart(res, per_row, tmp_path / "r.png", "RLCF (encoder)")
    other = [dict(r, pred=r["label"]) for r in recs]
    images = {"v2": [Image.new("RGB", (48, 48), (i, 0, 0)) for i in range(60)]}
    report.example_grid(images, {"v2": recs}, {"v2": other}, ["a", "b", "c"], "RLCF", tmp_path / "e.png")
    assert (tmp_path / "r.png").stat().st_size > 10_000 and (tmp_path / "e.png").stat().st_size > 5_000
