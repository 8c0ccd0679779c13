"""Recall@K against brute force (LAVIS ``_report_metrics`` with a stable sort), ties included."""
import numpy as np
import pytest
import torch

from tasks.retrieval.metrics import (
    best_rank,
    combine_directions,
    direction_metrics,
    ranked,
    recall_at_k,
    report_metrics,
)


def brute_rank(row: np.ndarray, gt) -> int:
    inds = np.argsort(row, kind="stable")[::-1]         # the documented tie rule
    return min(int(np.where(inds == g)[0][0]) for g in gt)


def lavis_metrics(s_i2t, s_t2i, img2txt, txt2img) -> dict:
    """LAVIS ``_report_metrics`` restated with loops (stable sort), both directions."""
    tr = np.array([brute_rank(s_i2t[i], img2txt[i]) for i in range(len(s_i2t))])
    ir = np.array([brute_rank(s_t2i[t], [txt2img[t]]) for t in range(len(s_t2i))])
    out = {}
    for p, r in (("txt", tr), ("img", ir)):
        for k in (1, 5, 10):
            out[f"{p}_r{k}"] = 100.0 * len(np.where(r < k)[0]) / len(r)
        out[f"{p}_r_mean"] = (out[f"{p}_r1"] + out[f"{p}_r5"] + out[f"{p}_r10"]) / 3
    out["r_mean"] = (out["txt_r_mean"] + out["img_r_mean"]) / 2
    return out


@pytest.mark.parametrize("levels", [3, 1000])      # 3 levels: ties everywhere; 1000: few ties
def test_best_rank_and_order_match_brute_force(levels):
    rng = np.random.default_rng(levels)
    scores = rng.integers(0, levels, size=(40, 30)).astype(np.float32)
    for row in scores:
        gt = list(rng.choice(30, size=int(rng.integers(1, 6)), replace=False))
        assert best_rank(torch.from_numpy(row), gt) == brute_rank(row, gt)
        assert ranked(torch.from_numpy(row), 30) == list(np.argsort(row, kind="stable")[::-1])


def test_tie_rule_higher_index_first():
    row = torch.tensor([1.0, 1.0, 1.0, 0.5])
    assert [best_rank(row, [g]) for g in range(4)] == [2, 1, 0, 3]
    assert ranked(row, 2) == [2, 1]


def test_full_matrix_metrics_equal_lavis_and_per_query_ranks():
    rng = np.random.default_rng(0)
    n_img, caps = 12, 5
    img2txt = [list(range(i * caps, (i + 1) * caps)) for i in range(n_img)]
    txt2img = [t // caps for t in range(n_img * caps)]
    s_i2t = rng.integers(0, 20, size=(n_img, n_img * caps)).astype(np.float64)
    s_t2i = rng.normal(size=(n_img * caps, n_img))
    ref = lavis_metrics(s_i2t, s_t2i, img2txt, txt2img)
    got = report_metrics(s_i2t, s_t2i, img2txt, txt2img)
    assert got.keys() == ref.keys()
    for k in ref:
        assert got[k] == pytest.approx(ref[k]), k
    # per-query ranks (what the runner stores) give the same numbers
    ranks = [best_rank(torch.from_numpy(s_i2t[i]), img2txt[i]) for i in range(n_img)]
    assert direction_metrics(ranks, "i2t")["txt_r5"] == pytest.approx(ref["txt_r5"])


def test_only_the_directions_run_are_reported():
    one = report_metrics(None, np.eye(4), [[0], [1], [2], [3]], [0, 1, 2, 3])
    assert set(one) == {"img_r1", "img_r5", "img_r10", "img_r_mean"} and one["img_r1"] == 100.0
    both = combine_directions(direction_metrics([0, 3, 20], "i2t"), direction_metrics([0, 0], "t2i"))
    assert both["txt_r1"] == pytest.approx(100 / 3) and both["txt_r5"] == pytest.approx(200 / 3)
    assert both["r_mean"] == pytest.approx((both["txt_r_mean"] + 100.0) / 2)
    assert recall_at_k([0, 4, 5, 9, 10]) == {1: 20.0, 5: 40.0, 10: 80.0}
    with pytest.raises(ValueError):
        direction_metrics([1], "x2y")
