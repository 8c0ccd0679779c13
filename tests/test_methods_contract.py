"""Contract tests over every registered method x every classification policy (timm/TRL style)."""
import copy

import pytest
import torch

import rlcf
import tasks.classification  # noqa: F401  (registers the peer methods: the contract covers them)
from conftest import CLASSNAMES, make_clip
from tasks.classification.policies import EncoderPolicy, PromptPolicy, class_prompts

POLICIES = ["prompt", "encoder"]


def build(policy_kind: str):
    clip, _, tok = make_clip()
    if policy_kind == "prompt":
        policy = PromptPolicy(clip, CLASSNAMES, tok)
        lr = 5e-2
    else:
        policy = EncoderPolicy(clip, CLASSNAMES, tok)
        lr = 1e-2
    rclip, _, rtok = make_clip("RLCF-Tiny-Reward", 1)
    reward = rlcf.CLIPReward(rclip, rtok)
    reward.set_candidates(class_prompts(CLASSNAMES))
    return policy, reward, lr


def make(name, policy, reward, lr, **kw):
    cls = rlcf.get_method(name)
    overrides = {"selection": 0.25, **kw}
    if cls.default_config.steps > 0:
        overrides["lr"] = lr
    return rlcf.create_method(name, policy, reward if cls.needs_reward or name == "rlcf" else None, **overrides)


def opt_state(method):
    return copy.deepcopy(method.optimizer.state_dict()) if method.optimizer is not None else None


@pytest.mark.parametrize("policy_kind", POLICIES)
@pytest.mark.parametrize("name", rlcf.list_methods())
def test_method_contract(name, policy_kind, views):
    policy, reward, lr = build(policy_kind)
    if not rlcf.get_method(name).supports(policy):
        with pytest.raises(ValueError, match="does not support"):
            make(name, policy, reward, lr)
        return
    method = make(name, policy, reward, lr)
    state0 = {k: v.clone() for k, v in policy.state_dict().items()}
    trainable = {n for n, p in policy.named_parameters() if p.requires_grad}
    opt0 = opt_state(method)

    with torch.no_grad():                     # must work inside the caller's no_grad
        out = method(views)
    assert out.shape == (len(CLASSNAMES),)
    assert torch.isfinite(out).all()
    assert method.last_info["flags"] == []

    # after return: the whole state_dict and the optimizer state equal the initial ones
    for k, v in policy.state_dict().items():
        assert torch.equal(v, state0[k]), k
    if opt0 is not None:
        assert opt_state(method) == opt0 or not method.optimizer.state

    # the same sample twice gives the same prediction (episodic independence; online: after reset)
    if not method.episodic:
        method.reset_state()
        out = method(views)
        method.reset_state()
    out2 = method(views)
    assert torch.equal(out, out2)

    # trainable parameters change after a step; frozen ones stay bit-identical
    if method.config.steps > 0:
        method.reset()
        ep = method.make_episode(views.to(method.device))
        method.begin(ep)
        method._adapt(ep, {"losses": [], "flags": []})
        after = dict(policy.named_parameters())
        changed = [n for n in trainable if not torch.equal(after[n], state0[n])]
        assert changed, f"{name}: no trainable parameter changed"
        for n, p in after.items():
            if n not in trainable:
                assert torch.equal(p, state0[n]), f"{name}: frozen {n} changed"
        method.reset()
        for k, v in policy.state_dict().items():
            assert torch.equal(v, state0[k]), k


@pytest.mark.parametrize("policy_kind", POLICIES)
def test_adapt_entry_point_restores_and_predicts(policy_kind, views):
    policy, reward, lr = build(policy_kind)
    state0 = {k: v.clone() for k, v in policy.state_dict().items()}
    zs = rlcf.adapt(policy, views, "zeroshot")
    with torch.no_grad():
        expected = policy(views[:1])[0]
    assert torch.allclose(zs, expected, atol=1e-6)
    out = rlcf.adapt(policy, views, "rlcf", reward=reward, lr=lr, selection=0.25)
    assert not torch.allclose(out, zs)          # adaptation changed the prediction
    for k, v in policy.state_dict().items():
        assert torch.equal(v, state0[k])


def test_inference_mode_is_refused(views):
    policy, reward, lr = build("prompt")
    with torch.inference_mode(), pytest.raises(RuntimeError, match="no_grad"):
        rlcf.adapt(policy, views, "tpt")


def test_bad_inputs(views):
    policy, reward, lr = build("prompt")
    with pytest.raises(ValueError, match=r"\[B, 3, H, W\]"):
        rlcf.adapt(policy, torch.randn(4, 1, 32, 32), "zeroshot")
    with pytest.raises(TypeError, match="float"):
        rlcf.adapt(policy, torch.zeros(4, 3, 32, 32, dtype=torch.uint8), "zeroshot")
    with pytest.raises(TypeError, match="Tensor"):
        rlcf.adapt(policy, [views], "zeroshot")
    with pytest.raises(ValueError, match="larger than the number of candidates"):
        rlcf.adapt(policy, views, "rlcf", reward=reward, k=len(CLASSNAMES) + 1)
    with pytest.raises(ValueError, match="needs a reward"):
        rlcf.adapt(policy, views, "rlcf")
    with pytest.raises(KeyError, match="available"):
        rlcf.adapt(policy, views, "nope")
    with pytest.raises(TypeError, match="unknown AdaptConfig"):
        rlcf.adapt(policy, views, "tpt", stepz=2)
    with pytest.raises(ValueError, match="steps"):
        rlcf.AdaptConfig(steps=-1)
    clip, _, tok = make_clip()
    with pytest.raises(ValueError, match="zero classes"):
        PromptPolicy(clip, [], tok)
    # steps = 0 is documented as "no adaptation": equals zero-shot
    zs = rlcf.adapt(policy, views, "zeroshot")
    assert torch.equal(rlcf.adapt(policy, views, "rlcf", reward=reward, steps=0), zs)
    # a single [3, H, W] image is one view
    assert rlcf.adapt(policy, views[0], "zeroshot").shape == (len(CLASSNAMES),)


def test_nan_loss_falls_back_and_restores(views):
    policy, reward, lr = build("prompt")
    state0 = {k: v.clone() for k, v in policy.state_dict().items()}
    zs = rlcf.adapt(policy, views, "zeroshot")

    class NaNReward:
        def set_query(self, q): pass
        def __call__(self, c): return torch.full(c.shape, float("nan"))

    method = rlcf.create_method("rlcf", policy, NaNReward(), selection=0.25, normalize_advantages=True)
    out = method(views)
    assert method.last_info["flags"] == [rlcf.Flags.NAN_FALLBACK]
    assert torch.equal(out, zs)
    for k, v in policy.state_dict().items():
        assert torch.equal(v, state0[k])


def test_every_registered_method_is_covered():   # the peers are registered by the module-level import
    assert {"zeroshot", "tpt", "rlcf", "ctpt", "zero", "tda", "kd"} <= set(rlcf.list_methods())
