"""Rewards, baselines, losses and sampling against hand-computed values."""
import math

import pytest
import torch
import torch.nn.functional as F

import rlcf
from rlcf.baselines import compute_advantages
from rlcf.losses import entropy, marginal_entropy, reinforce_ce, select_confident
from rlcf.reward import clip_score
from rlcf.sampling import sample_candidates, topk_candidates


def test_clip_score_hand_values():
    img = torch.tensor([[1.0, 0.0], [0.0, 2.0], [1.0, 1.0]])
    txt = torch.tensor([[1.0, 0.0], [0.0, -3.0], [1.0, 0.0]])
    # cos = 1, -1 (clipped to 0), 1/sqrt(2)
    expected = torch.tensor([2.5, 0.0, 2.5 / math.sqrt(2)])
    assert torch.allclose(clip_score(img, txt), expected, atol=1e-6)
    assert torch.allclose(clip_score(img, txt, weight=1.0), expected / 2.5, atol=1e-6)


@pytest.mark.parametrize("baseline,expected", [
    ("mean", [[-1.0, 0.0, 1.0], [0.0, 0.0, 0.0]]),
    ("loo", [[-1.5, 0.0, 1.5], [0.0, 0.0, 0.0]]),       # r - mean(others): 1-2.5, 2-2, 3-1.5
    ("none", [[1.0, 2.0, 3.0], [5.0, 5.0, 5.0]]),
    ("batch", [[-2.5, -1.5, -0.5], [1.5, 1.5, 1.5]]),   # batch mean = 21 / 6 = 3.5
])
def test_baselines_hand_values(baseline, expected):
    r = torch.tensor([[1.0, 2.0, 3.0], [5.0, 5.0, 5.0]])   # second row: ties
    assert torch.allclose(compute_advantages(r, baseline), torch.tensor(expected))


def test_baseline_k1_uses_raw_reward_like_official():
    r = torch.tensor([[0.7], [0.2]])
    assert torch.equal(compute_advantages(r, "mean"), r)
    assert torch.equal(compute_advantages(r, "loo"), r)


def test_normalized_advantages_use_unbiased_std_plus_eps():
    r = torch.tensor([[1.0, 2.0, 3.0]])
    adv = compute_advantages(r, "mean", normalize=True)
    assert torch.allclose(adv, torch.tensor([[-1.0, 0.0, 1.0]]) / (1.0 + 1e-5))
    ties = compute_advantages(torch.tensor([[2.0, 2.0]]), "mean", normalize=True)
    assert torch.equal(ties, torch.zeros(1, 2))


def test_unknown_baseline_lists_choices():
    with pytest.raises(KeyError, match="loo"):
        compute_advantages(torch.zeros(2, 2), "median")


def test_topk_and_errors():
    logits = torch.tensor([[0.1, 3.0, 2.0, 2.0]])
    assert topk_candidates(logits, 2)[0, 0].item() == 1
    assert set(topk_candidates(logits, 3)[0].tolist()) == {1, 2, 3}
    with pytest.raises(ValueError, match="larger than the number of candidates"):
        topk_candidates(logits, 5)
    with pytest.raises(ValueError):
        topk_candidates(logits, 0)


def test_sampling_distinct_and_reproducible():
    logits = torch.randn(5, 10)
    g1, g2 = torch.Generator().manual_seed(1), torch.Generator().manual_seed(1)
    a, b = sample_candidates(logits, 4, generator=g1), sample_candidates(logits, 4, generator=g2)
    assert torch.equal(a, b) and a.shape == (5, 4)
    assert all(len(set(row.tolist())) == 4 for row in a)
    # peaked distribution -> the argmax is always sampled first
    peaked = torch.full((3, 6), -1e4); peaked[:, 2] = 0.0
    assert (sample_candidates(peaked, 1)[:, 0] == 2).all()


def test_reinforce_ce_hand_value():
    logits = torch.tensor([[2.0, 1.0, 0.0]])
    cand = torch.tensor([[0, 1]])
    adv = torch.tensor([[0.5, -0.5]])
    logp = F.log_softmax(logits, -1)[0]
    expected = -(0.5 * logp[0] - 0.5 * logp[1]) / 2
    assert torch.allclose(reinforce_ce(logits, cand, adv), expected)


def test_official_loss_form_gradient_equals_policy_gradient():
    """top-K + mean baseline + advantage-weighted CE == grad of -(adv * log p).mean()."""
    torch.manual_seed(0)
    logits = torch.randn(6, 10, requires_grad=True)
    rewards_table = torch.rand(10)
    # official: repeat_interleave + CE(reduction=none) * flattened rewards, mean
    idx = torch.topk(logits.detach(), 3, dim=-1).indices
    r = rewards_table[idx]
    adv = (r - r.mean(-1, keepdim=True)).flatten()
    rep = torch.repeat_interleave(logits, 3, dim=0)
    official = torch.mean(adv * F.cross_entropy(rep, idx.flatten(), reduction="none"))
    g_official, = torch.autograd.grad(official, logits)
    # independent: -(adv * log p).mean()
    logp = torch.log_softmax(logits, -1).gather(1, idx)
    indep = -(adv.view(6, 3) * logp).mean()
    g_indep, = torch.autograd.grad(indep, logits)
    # ours
    ours = reinforce_ce(logits, topk_candidates(logits, 3), compute_advantages(r, "mean"))
    g_ours, = torch.autograd.grad(ours, logits)
    assert torch.allclose(g_official, g_indep, atol=1e-7)
    assert torch.allclose(g_ours, g_official, atol=1e-7)


def test_entropy_selection_and_marginal_entropy():
    logits = torch.tensor([[10.0, 0.0, 0.0], [0.0, 0.0, 0.0], [5.0, 0.0, 0.0], [0.0, 8.0, 0.0]])
    sel = select_confident(logits, 0.5)
    assert sel.tolist() == [0, 3]
    assert select_confident(logits, 0.1).tolist() == [0]  # at least one view
    uniform = torch.zeros(4, 3)
    assert torch.allclose(marginal_entropy(uniform), torch.tensor(math.log(3)))
    # marginal entropy = entropy of the mean probability
    x = torch.randn(5, 7)
    p = x.softmax(-1).mean(0)
    assert torch.allclose(marginal_entropy(x), -(p * p.log()).sum(), atol=1e-6)
    assert torch.allclose(entropy(uniform), torch.full((4,), math.log(3)))
    with pytest.raises(ValueError):
        select_confident(logits, 0.0)


class _FakeCLIP(torch.nn.Module):
    def __init__(self):
        super().__init__()
        self.w = torch.nn.Linear(3, 2, bias=False)
        self.logit_scale = torch.nn.Parameter(torch.tensor(1.0))

    def encode_image(self, x):
        return self.w(x.mean((2, 3)))

    def encode_text(self, t):
        return torch.nn.functional.one_hot(t[:, 0] % 2, 2).float()


def test_clip_reward_caches_and_scores():
    model = _FakeCLIP()
    with torch.no_grad():
        model.w.weight.copy_(torch.tensor([[1.0, 0.0, 0.0], [0.0, 1.0, 0.0]]))
    reward = rlcf.CLIPReward(model, tokenizer=lambda xs: torch.tensor([[len(x)] for x in xs]))
    reward.set_candidates(["ab", "abc"])          # features e0, e1
    img = torch.zeros(2, 3, 4, 4); img[0, 0] = 1.0; img[1, 1] = 1.0  # features e0, e1
    calls = reward.encode_calls
    r = reward(img, torch.tensor([[0, 1], [0, 1]]))
    assert torch.allclose(r, torch.tensor([[2.5, 0.0], [0.0, 2.5]]))
    assert reward.encode_calls == calls + 1      # the query once; candidate indices are never re-encoded
    r = reward(img, torch.tensor([[1, 0], [1, 1]]))
    assert torch.allclose(r, torch.tensor([[0.0, 2.5], [2.5, 2.5]])) and reward.encode_calls == calls + 1
    rt = reward(img, [["ab", "abc"], ["abc", "abc"]])  # raw text candidates
    assert torch.allclose(rt, torch.tensor([[2.5, 0.0], [2.5, 2.5]]))
    img[0, 0] = 0.0; img[0, 1] = 1.0                  # the same tensor modified in place: encoded again
    assert torch.allclose(reward(img, torch.tensor([[0, 1], [0, 1]])), torch.tensor([[0.0, 2.5], [0.0, 2.5]]))


def test_ensemble_weights_official_rounding():
    class Const:
        def __init__(self, v): self.v = v
        def __call__(self, q, c): return torch.full(c.shape, self.v)
    ens = rlcf.EnsembleReward([Const(1.0), Const(2.0), Const(3.0)], weights=[10, 3, 5])
    assert ens.weights == [0.56, 0.17, 0.28]
    out = ens(torch.zeros(1, 3, 4, 4), torch.zeros(1, 2, dtype=torch.long))
    assert torch.allclose(out, torch.full((1, 2), 0.56 + 0.34 + 0.84))
