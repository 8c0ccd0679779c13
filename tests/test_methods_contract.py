"""Contract tests over every registered method x every policy kind (timm/TRL style), public API only.

Policy kinds: classification prompt tuning and encoder tuning, retrieval image-to-text and text-to-image,
and caption TTA. For every (method, policy) pair that ``supports`` allows: the prediction has the
policy's shape and is finite, no flag is raised, the model and optimizer are bit-exact after the call, the
same sample twice gives the same prediction, trainable parameters move during adaptation and frozen ones
never do. Pairs that ``supports`` refuses raise a clear error.
"""
import copy

import pytest
import torch

import rlcf
from conftest import CLASSNAMES, make_clip
from rlcf.episodic import trainable_named_parameters
from tasks.classification.policies import EncoderPolicy, PromptPolicy, PrototypePolicy, class_prompts

POLICIES = ["prompt", "encoder", "prototype"]
ALL_POLICIES = ["prompt", "encoder", "prototype", "i2t", "t2i", "caption"]
CAPTIONS = [f"a {c} {s}" for c in ("red", "green", "blue") for s in ("circle", "square", "star")]


def build(policy_kind: str):
    """``(policy, reward, lr, sample, check)``: a tiny policy of that kind, its reward, a learning rate that
    visibly moves it, one sample, and a check of the prediction's form."""
    clip, _, tok = make_clip()
    rclip, _, rtok = make_clip("RLCF-Tiny-Reward", 1)
    reward = rlcf.CLIPReward(rclip, rtok)
    views = torch.randn(16, 3, 32, 32, generator=torch.Generator().manual_seed(3))

    def logits_of(n):
        return lambda out: isinstance(out, torch.Tensor) and out.shape == (n,) and torch.isfinite(out).all()

    if policy_kind in ("prompt", "encoder", "prototype"):
        policy = {"prompt": PromptPolicy, "encoder": EncoderPolicy, "prototype": PrototypePolicy}[policy_kind](
            clip, CLASSNAMES, tok)
        reward.set_candidates(class_prompts(CLASSNAMES))
        return policy, reward, 1e-2 if policy_kind == "encoder" else 5e-2, views, logits_of(len(CLASSNAMES))
    if policy_kind == "i2t":
        from tasks.retrieval.policies import ImageToTextPolicy, encode_text_gallery

        reward.set_candidates(CAPTIONS)
        policy = ImageToTextPolicy(clip, encode_text_gallery(clip, tok, CAPTIONS))
        return policy, reward, 1e-2, views[0], logits_of(len(CAPTIONS))
    if policy_kind == "t2i":
        from tasks.retrieval.policies import TextToImagePolicy

        images = torch.randn(6, 3, 32, 32, generator=torch.Generator().manual_seed(5))
        with torch.no_grad():
            gallery = clip.encode_image(images)
        reward.set_candidates(images)
        return TextToImagePolicy(clip, gallery, tok), reward, 1e-2, CAPTIONS[4], logits_of(6)
    from tasks.captioning.checkpoint import tiny_captioner
    from tasks.captioning.policy import CaptionPolicy

    cap = tiny_captioner(CAPTIONS, prefix_dim=32, hidden=32, heads=2, seed=0, max_new_tokens=5)
    return CaptionPolicy(cap, clip), reward, 5e-2, views[:1], lambda out: isinstance(out, str)


def make(name, policy, reward, lr, kind="prompt", **kw):
    cls = rlcf.get_method(name)
    overrides = {"selection": 0.25 if kind in POLICIES else 1.0, **kw}
    if cls.default_config.steps > 0:
        overrides["lr"] = lr
    if kind in ("i2t", "t2i", "caption") and cls.default_config.steps > 0:
        overrides.setdefault("k", 3)
    return rlcf.create_method(name, policy, reward if cls.needs_reward or name == "rlcf" else None, **overrides)


def opt_state(method):
    return copy.deepcopy(method.optimizer.state_dict()) if method.optimizer is not None else None


def adapted_parameters(method, sample):
    """Run ``method(sample)`` and return the policy's parameters as they were just before the final reset."""
    reset, seen = method.reset, {}

    def capture():
        seen.update({n: p.detach().clone() for n, p in method.policy.named_parameters()})
        reset()

    method.reset = capture
    try:
        with torch.no_grad():
            method(sample)
    finally:
        method.reset = reset
    return seen


@pytest.mark.parametrize("policy_kind", ALL_POLICIES)
@pytest.mark.parametrize("name", rlcf.list_methods())
def test_method_contract(name, policy_kind):
    policy, reward, lr, sample, check = build(policy_kind)
    if not rlcf.get_method(name).supports(policy):
        with pytest.raises(ValueError, match="does not support"):
            make(name, policy, reward, lr, policy_kind)
        return
    method = make(name, policy, reward, lr, policy_kind)
    state0 = {k: v.clone() for k, v in policy.state_dict().items()}
    trainable = set(trainable_named_parameters(policy))
    opt0 = opt_state(method)

    with torch.no_grad():                     # must work inside the caller's no_grad
        out = method(sample)
    assert check(out), out
    assert method.last_info["flags"] == []
    assert method.last_info["precision"] == "fp32"

    # after return: the whole state_dict and the optimizer state equal the initial ones
    for k, v in policy.state_dict().items():
        assert torch.equal(v, state0[k]), k
    if opt0 is not None:
        assert opt_state(method) == opt0 or not method.optimizer.state

    # the same sample twice gives the same prediction (episodic independence; online: after a stream reset)
    if method.online:
        method.reset_stream()
        out = method(sample)
        method.reset_stream()
    out2 = method(sample)
    assert (torch.equal(out, out2) if isinstance(out, torch.Tensor) else out == out2)

    # trainable parameters change during adaptation; frozen ones stay bit-identical; all restored after
    if method.config.steps > 0:
        before = {n: p.detach().clone() for n, p in policy.named_parameters()}
        after = adapted_parameters(method, sample)
        changed = [n for n in trainable if not torch.equal(after[n], before[n])]
        assert changed, f"{name}: no trainable parameter changed"
        for n in after:
            if n not in trainable:
                assert torch.equal(after[n], before[n]), f"{name}: frozen {n} changed"
        for k, v in policy.state_dict().items():
            assert torch.equal(v, state0[k]), k


def test_two_policies_over_one_clip_equal_two_copies(views):
    """Policies own what they train: a prompt and an encoder policy sharing one CLIP give the same results as
    each over its own copy (neither flips the other's requires_grad)."""
    clip, _, tok = make_clip()
    rclip, _, rtok = make_clip("RLCF-Tiny-Reward", 1)
    reward = rlcf.CLIPReward(rclip, rtok)
    reward.set_candidates(class_prompts(CLASSNAMES))
    shared = [PromptPolicy(clip, CLASSNAMES, tok), EncoderPolicy(clip, CLASSNAMES, tok)]
    own = [PromptPolicy(make_clip()[0], CLASSNAMES, tok), EncoderPolicy(make_clip()[0], CLASSNAMES, tok)]
    for order in ((0, 1), (1, 0)):
        for i in order:
            lr = 5e-2 if i == 0 else 1e-2
            a = rlcf.create_method("rlcf", shared[i], reward, lr=lr, selection=0.25)
            b = rlcf.create_method("rlcf", own[i], reward, lr=lr, selection=0.25)
            assert len(a.params) == len(b.params)
            with torch.no_grad():
                assert torch.allclose(a(views), b(views), atol=1e-6), (order, i)
    assert len(rlcf.create_method("tpt", shared[0]).params) == 1        # the prompt method tunes the context only


@pytest.mark.parametrize("policy_kind", POLICIES)
def test_adapt_entry_point_restores_and_predicts(policy_kind, views):
    policy, reward, lr, _, _ = build(policy_kind)
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
    policy, reward, lr, _, _ = build("prompt")
    with torch.inference_mode(), pytest.raises(RuntimeError, match="no_grad"):
        rlcf.adapt(policy, views, "tpt")


def test_bad_inputs(views):
    policy, reward, lr, _, _ = build("prompt")
    with pytest.raises(ValueError, match=r"\[B, 3, H, W\]"):
        rlcf.adapt(policy, torch.randn(4, 1, 32, 32), "zeroshot")
    with pytest.raises(TypeError, match="float"):
        rlcf.adapt(policy, torch.zeros(4, 3, 32, 32, dtype=torch.uint8), "zeroshot")
    with pytest.raises(TypeError, match="Tensor"):
        rlcf.adapt(policy, [[1, 2]], "zeroshot")          # a list of B view tensors is a batch; this is nothing
    with pytest.raises(TypeError, match="Tensor"):
        rlcf.adapt(policy, {"views": views}, "zeroshot")
    assert len(rlcf.adapt(policy, [views], "zeroshot")) == 1   # a batch of one
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
    policy, reward, lr, _, _ = build("prompt")
    state0 = {k: v.clone() for k, v in policy.state_dict().items()}
    zs = rlcf.adapt(policy, views, "zeroshot")

    class NaNReward:
        def __call__(self, q, c): return torch.full(c.shape, float("nan"))

    method = rlcf.create_method("rlcf", policy, NaNReward(), selection=0.25, normalize_advantages=True)
    out = method(views)
    assert method.last_info["flags"] == [rlcf.Flags.NAN_FALLBACK]
    assert torch.equal(out, zs)
    for k, v in policy.state_dict().items():
        assert torch.equal(v, state0[k])


def test_every_method_registers_itself():
    """Each module of ``tasks/methods/`` registers its own method with ``@register_method``, and ``load_all`` imports
    them all: the registry holds the core's methods and one per module, nothing else; importing a task package
    registers nothing by itself."""
    import importlib
    import subprocess
    import sys

    import tasks.methods

    names = tasks.methods.load_all()
    homes = {rlcf.get_method(n).__module__ for n in names}
    assert homes == {"rlcf.methods"} | {f"tasks.methods.{m}" for m in tasks.methods.modules()}
    for m in tasks.methods.modules():
        mod = importlib.import_module(f"tasks.methods.{m}")
        assert any(rlcf.get_method(n).__module__ == mod.__name__ and rlcf.get_method(n).name == n for n in names)
    assert rlcf.get_method("zero") is rlcf.get_method("zero_vote") and "zero" not in names   # the name configs type
    code = "import rlcf, tasks.classification, tasks.retrieval, tasks.captioning; print(rlcf.list_methods())"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert out.stdout.strip() == "['rlcf', 'tpt', 'zeroshot']", out.stderr


def test_method_options_are_checked_by_name_and_type():
    """A method's own options (``adapt.options`` in a config) are a typed dataclass: an unknown name lists the
    method's options, a wrong type names the option; a method without options says 'none'."""
    from tasks.methods import load_all

    load_all()
    policy = build("prompt")[0]
    assert rlcf.create_method("ctpt", policy, options={"ctpt_lambda": 50.0}).options.ctpt_lambda == 50.0
    with pytest.raises(TypeError, match=r"no option\(s\) \['lambda'\]; its options: \['ctpt_lambda'\]"):
        rlcf.create_method("ctpt", policy, options={"lambda": 50.0})
    with pytest.raises(TypeError, match="option 'ctpt_lambda' of method 'ctpt' expects float"):
        rlcf.create_method("ctpt", policy, options={"ctpt_lambda": "big"})
    with pytest.raises(TypeError, match="its options: none"):
        rlcf.create_method("tpt", policy, options={"anything": 1})
