"""Distinctiveness metrics: CLIP Recall (text-to-image) and image-to-text retrieval against a brute-force
ranking, and the quality metrics."""
from __future__ import annotations

import torch
import torch.nn.functional as F

from tasks.caption_rl.metrics import (
    clip_recall,
    distinctiveness_metrics,
    image_to_text_recall,
    quality_metrics,
    retrieval_ranks,
)


def _brute(scores: torch.Tensor) -> list[int]:
    """Rank of the diagonal item of each row by sorting the row (Python ``sorted``, best first)."""
    ranks = []
    for q, row in enumerate(scores.tolist()):
        order = sorted(range(len(row)), key=lambda j: -row[j])
        ranks.append(order.index(q) + 1)
    return ranks


def test_clip_recall_matches_brute_force():
    g = torch.Generator().manual_seed(0)
    n, d = 23, 6
    img = torch.randn(n, d, generator=g)
    txt = img + 1.2 * torch.randn(n, d, generator=g)
    cos = F.normalize(txt, dim=-1) @ F.normalize(img, dim=-1).t()
    ranks = _brute(cos)
    got = clip_recall(txt, img)
    assert abs(got["MRR"] - sum(1 / r for r in ranks) / n) < 1e-6
    for k in (1, 5, 10):
        assert abs(got[f"R@{k}"] - sum(r <= k for r in ranks) / n) < 1e-6
    assert 0 < got["R@1"] < got["R@5"] < 1
    ranks_i2t = _brute(cos.t())
    got_i2t = image_to_text_recall(txt, img)
    assert abs(got_i2t["MRR"] - sum(1 / r for r in ranks_i2t) / n) < 1e-6
    assert abs(got_i2t["R@5"] - sum(r <= 5 for r in ranks_i2t) / n) < 1e-6


def test_ranks_chunks_targets_and_ties():
    scores = torch.randn(10, 7)
    targets = torch.randint(0, 7, (10,))
    want = [1 + sum(1 for j in range(7) if j != t and scores[q, j] >= scores[q, t])
            for q, t in enumerate(targets.tolist())]
    assert retrieval_ranks(scores, targets, chunk=3).tolist() == want
    assert retrieval_ranks(torch.zeros(3, 3)).tolist() == [3, 3, 3]   # ties count against the query


def test_quality_metrics_and_full_report(tiny_clip):
    caps = ["a red circle on a blue background", "a red circle on a blue background", "two green stars"]
    q = quality_metrics(caps)
    assert q["vocab_size"] == 9 and abs(q["mean_length"] - (7 + 7 + 3) / 3) < 1e-6
    assert q["self_BLEU-4"] > 0
    model, _, tok = tiny_clip
    images = torch.randn(3, 3, 32, 32)
    with torch.no_grad():
        feats = model.encode_image(images)
    m = distinctiveness_metrics(caps, feats, model, tok)
    assert {"t2i/MRR", "t2i/R@1", "t2i/R@10", "i2t/R@5", "self_BLEU-4", "vocab_size", "mean_length"} <= set(m)
    assert m["n"] == 3 and m["t2i/R@5"] == 1.0
