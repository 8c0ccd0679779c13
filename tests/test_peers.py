"""Peer methods: their key step against hand computations (ZERO vote, TDA cache, C-TPT, KD)."""
import math

import torch

import rlcf
from conftest import CLASSNAMES, make_clip
from tasks.methods.ctpt import text_dispersion
from tasks.methods.tda import TDACache
from tasks.methods.zero_vote import zero_vote
from tasks.classification.policies import EncoderPolicy, PromptPolicy, class_prompts


def test_zero_vote_majority_and_official_tie_break():
    # 10 views x 3 classes; gamma 0.3 keeps the 3 lowest-entropy views
    logits = torch.zeros(10, 3)
    logits[0, 0] = 20; logits[1, 1] = 19; logits[2, 2] = 18   # confident, one vote each: a 3-way tie
    logits[3:, 1] = 1.0                                        # view 3 (first at position int(10*0.3)) says 1
    votes = zero_vote(logits, 0.3)
    assert votes.tolist() == [1.0, 2.0, 1.0]
    logits2 = torch.zeros(10, 3)
    logits2[0, 2] = 20; logits2[1, 2] = 19; logits2[2, 0] = 18
    assert zero_vote(logits2, 0.3).tolist() == [1.0, 0.0, 2.0]   # plain majority, no tie


def test_tda_cache_update_keeps_lowest_entropy():
    cache = TDACache(capacity=2)
    f = torch.eye(4)
    cache.update(1, f[0], 0.9)
    cache.update(1, f[1], 0.5)
    cache.update(1, f[2], 0.7)      # full: replaces the worst (0.9)
    cache.update(1, f[3], 0.95)     # worse than every entry: ignored
    assert [round(x[1], 2) for x in cache.items[1]] == [0.5, 0.7]
    # cache logits: alpha * exp(-beta * (1 - affinity)) @ one_hot
    q = f[1]
    out = cache.logits(q, alpha=2.0, beta=5.0, num_classes=3)
    expected = 2.0 * (math.exp(0.0) + math.exp(-5.0))
    assert torch.allclose(out, torch.tensor([0.0, expected, 0.0]))


def test_tda_online_state_changes_predictions_and_resets(views):
    clip, _, tok = make_clip()
    policy = EncoderPolicy(clip, CLASSNAMES, tok)
    tda = rlcf.create_method("tda", policy)
    zs = rlcf.adapt(policy, views, "zeroshot")
    first = tda(views)
    assert tda.last_info["pos_size"] == 1 and not tda.episodic
    second = tda(views)   # the cache now holds this sample: logits change
    assert not torch.equal(first, second)
    tda.reset_stream()
    assert torch.equal(tda(views), first)
    assert first.shape == zs.shape


def test_tda_stream_state_resumes_a_stream_exactly(views):
    """``stream_state`` after k samples, loaded into a fresh method, gives the rest of the stream exactly as one
    uninterrupted run (a resumable online stream without replaying it)."""
    import copy

    clip, _, tok = make_clip()
    g = torch.Generator().manual_seed(7)
    stream = [views] + [torch.randn(views.shape, generator=g) for _ in range(3)]
    whole = rlcf.create_method("tda", EncoderPolicy(clip, CLASSNAMES, tok))
    expected = [whole(x) for x in stream]
    first = rlcf.create_method("tda", EncoderPolicy(clip, CLASSNAMES, tok))
    for x in stream[:2]:
        first(x)
    state = copy.deepcopy(first.stream_state())
    assert sum(len(v) for v in state["pos"].values()) >= 1
    resumed = rlcf.create_method("tda", EncoderPolicy(clip, CLASSNAMES, tok))
    resumed.load_stream_state(state)
    assert all(torch.equal(resumed(x), e) for x, e in zip(stream[2:], expected[2:]))
    fresh = rlcf.create_method("tda", EncoderPolicy(clip, CLASSNAMES, tok))
    assert not torch.equal(fresh(stream[2]), expected[2])      # the carried caches matter


def test_ctpt_dispersion_and_loss():
    t = torch.tensor([[1.0, 0.0], [0.0, 1.0], [-1.0, 0.0], [0.0, -1.0]])
    assert torch.allclose(text_dispersion(t), torch.tensor(1.0))
    clip, _, tok = make_clip()
    policy = PromptPolicy(clip, CLASSNAMES, tok)
    m = rlcf.create_method("ctpt", policy, selection=0.25, options={"ctpt_lambda": 0.0})
    tpt = rlcf.create_method("tpt", policy, selection=0.25)
    v = torch.randn(8, 3, 32, 32)
    assert torch.allclose(m(v), tpt(v), atol=1e-6)    # lambda = 0 reduces C-TPT to TPT
    m2 = rlcf.create_method("ctpt", policy, selection=0.25, options={"ctpt_lambda": 50.0})
    assert not torch.allclose(m2(v), tpt(v))


def test_kd_teacher_is_reward_clip_logits(views):
    clip, _, tok = make_clip()
    policy = EncoderPolicy(clip, CLASSNAMES, tok)
    rclip, _, rtok = make_clip("RLCF-Tiny-Reward", 1)
    reward = rlcf.CLIPReward(rclip, rtok)
    reward.set_candidates(class_prompts(CLASSNAMES))
    teacher = reward.teacher_logits(views[:2])
    with torch.no_grad():
        fi = torch.nn.functional.interpolate(views[:2], size=48, mode="bicubic", align_corners=True)
        fi = torch.nn.functional.normalize(rclip.encode_image(fi), dim=-1)
        ft = torch.nn.functional.normalize(rclip.encode_text(rtok(class_prompts(CLASSNAMES))), dim=-1)
    assert torch.allclose(teacher, rclip.logit_scale.exp() * fi @ ft.t(), atol=1e-4)
    out = rlcf.adapt(policy, views, "kd", reward=reward, lr=1e-2, selection=0.25)
    assert torch.isfinite(out).all()
