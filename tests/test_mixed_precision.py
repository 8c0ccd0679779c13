"""Mixed precision on CPU, through exactly the code that runs on CUDA: fp16 autocast + GradScaler and bf16
autocast, for every registered method and every policy kind (classification, retrieval, captioning).

Tolerances (tiny random models, one to three adaptation steps): the adapted prediction's softmax
probabilities are within 0.02 of fp32 for fp16 and within 0.1 for bf16 (8-bit mantissa: a step amplifies
it, and the confident-view selection may pick another view when two entropies differ by less than bf16
resolves). The fp16 GradScaler skips a step whose gradients hold inf/NaN, lowers its scale, and persists
across samples as the official loops' single ``GradScaler(init_scale=1000)`` does.
"""
from __future__ import annotations

import pytest
import torch

import rlcf
from conftest import CLASSNAMES, make_clip
from tasks.classification.policies import EncoderPolicy, PromptPolicy, PrototypePolicy, class_prompts

TOL = {"fp16": 0.02, "bf16": 0.1}
CAPTIONS = [f"a {c} {s}" for c in ("red", "green", "blue") for s in ("circle", "square", "star")]


def classification(kind: str):
    clip, _, tok = make_clip()
    policy = {"prompt": PromptPolicy, "encoder": EncoderPolicy, "prototype": PrototypePolicy}[kind](clip, CLASSNAMES, tok)
    rclip, _, rtok = make_clip("RLCF-Tiny-Reward", 1)
    reward = rlcf.CLIPReward(rclip, rtok)
    reward.set_candidates(class_prompts(CLASSNAMES))
    return policy, reward, (1e-3 if kind == "encoder" else 1e-2)


def retrieval(direction: str):
    from tasks.retrieval.policies import ImageToTextPolicy, TextToImagePolicy, encode_text_gallery

    clip, _, tok = make_clip()
    rclip, _, rtok = make_clip("RLCF-Tiny-Reward", 1)
    reward = rlcf.CLIPReward(rclip, rtok)
    if direction == "i2t":
        reward.set_candidates(CAPTIONS)
        return ImageToTextPolicy(clip, encode_text_gallery(clip, tok, CAPTIONS)), reward, None
    images = torch.randn(6, 3, 32, 32, generator=torch.Generator().manual_seed(5))
    with torch.no_grad():
        gallery = clip.encode_image(images)
    reward.set_candidates(images)
    return TextToImagePolicy(clip, gallery, tok), reward, tok


def make(name: str, policy, reward, lr: float, amp, **kw) -> rlcf.Method:
    cls = rlcf.get_method(name)
    over = {"selection": 0.25, "amp": amp, **kw}
    if cls.default_config.steps > 0:
        over["lr"] = lr
    return rlcf.create_method(name, policy, reward if cls.needs_reward else None, **over)


def _pairs():
    out = []
    for kind in ("prompt", "encoder", "prototype"):
        policy, _, _ = classification(kind)
        out += [(name, kind) for name in rlcf.list_methods() if rlcf.get_method(name).supports(policy)]
    return out


@pytest.mark.parametrize("name,kind", _pairs())
@pytest.mark.parametrize("amp", ["fp16", "bf16"])
def test_classification_low_precision_agrees_with_fp32(name, kind, amp, views):
    policy, reward, lr = classification(kind)
    state0 = {k: v.clone() for k, v in policy.state_dict().items()}
    with torch.no_grad():
        ref = make(name, policy, reward, lr, None)(views)
        method = make(name, policy, reward, lr, amp)
        out = method(views)
    assert out.dtype == torch.float32 and torch.isfinite(out).all()
    assert (out.softmax(-1) - ref.softmax(-1)).abs().max() <= TOL[amp]
    assert method.precision == amp and method.last_info["precision"] == amp
    for k, v in policy.state_dict().items():                  # the reset stays bit-exact
        assert torch.equal(v, state0[k]), k
    if amp == "fp16" and method.config.steps > 0:
        assert isinstance(method.scaler, torch.amp.GradScaler) and method.scaler.get_scale() == 1000.0


def _inject_inf_once(policy):
    """A hook that turns the first backward's gradient of one trainable parameter into inf."""
    p = next(iter(policy.trainable_parameters().values()))
    fired = []

    def hook(g):
        if not fired:
            fired.append(1)
            return torch.full_like(g, float("inf"))
        return g

    return p.register_hook(hook), fired


@pytest.mark.parametrize("name,kind", [(n, k) for n, k in _pairs() if rlcf.get_method(n).default_config.steps > 0])
def test_fp16_inf_gradient_skips_the_step_and_the_scaler_persists(name, kind, views):
    policy, reward, lr = classification(kind)
    state0 = {k: v.clone() for k, v in policy.state_dict().items()}
    with torch.no_grad():
        unadapted = make(name, policy, reward, lr, "fp16", steps=0)(views)
        method = make(name, policy, reward, lr, "fp16", steps=1)
        handle, fired = _inject_inf_once(policy)
        out = method(views)
        handle.remove()
    assert fired and method.last_info["skipped_steps"] == 1
    assert method.last_info["flags"] == []                    # a skipped step is not a fallback
    assert torch.isfinite(out).all()
    assert torch.allclose(out, unadapted, atol=1e-5)          # the only step was skipped: nothing moved
    for k, v in policy.state_dict().items():
        assert torch.equal(v, state0[k]), k
    scaler = method.scaler
    assert scaler.get_scale() == 500.0                        # lowered once
    with torch.no_grad():
        method(views)                                         # next sample: the same scaler, not reset
    assert method.scaler is scaler and scaler.get_scale() == 500.0 and "skipped_steps" not in method.last_info


@pytest.mark.parametrize("direction", ["i2t", "t2i"])
@pytest.mark.parametrize("amp", ["fp16", "bf16"])
def test_retrieval_low_precision(direction, amp):
    policy, reward, tok = retrieval(direction)
    query = torch.randn(1, 3, 32, 32, generator=torch.Generator().manual_seed(1)) if direction == "i2t" else CAPTIONS[4]
    state0 = {k: v.clone() for k, v in policy.state_dict().items()}
    outs = {}
    for a in (None, amp):
        m = rlcf.create_method("rlcf", policy, reward, steps=2, lr=1e-3, k=3, selection=1.0, amp=a)
        with torch.no_grad():
            outs[a] = m(query)
        for k, v in policy.state_dict().items():
            assert torch.equal(v, state0[k]), k
    assert outs[amp].dtype == torch.float32
    assert (outs[amp].softmax(-1) - outs[None].softmax(-1)).abs().max() <= TOL[amp]
    if amp == "fp16":   # an injected inf gradient is skipped here too
        m = rlcf.create_method("rlcf", policy, reward, steps=1, lr=1e-3, k=3, selection=1.0, amp="fp16")
        zs = rlcf.create_method("rlcf", policy, reward, steps=0, k=3, selection=1.0, amp="fp16")
        handle, fired = _inject_inf_once(policy)
        with torch.no_grad():
            out = m(query)
            base = zs(query)
        handle.remove()
        assert fired and m.last_info["skipped_steps"] == 1 and torch.allclose(out, base, atol=1e-5)


@pytest.mark.parametrize("amp", ["fp16", "bf16"])
def test_caption_low_precision(amp):
    from tasks.captioning.checkpoint import tiny_captioner
    from tasks.captioning.policy import CaptionPolicy

    cap = tiny_captioner(CAPTIONS, prefix_dim=32, hidden=32, heads=2, seed=0, max_new_tokens=5).eval()
    clip, _, _ = make_clip()
    rclip, _, rtok = make_clip("RLCF-Tiny-Reward", 1)
    policy = CaptionPolicy(cap, clip)
    reward = rlcf.CLIPReward(rclip, rtok)
    image = torch.randn(1, 3, 32, 32, generator=torch.Generator().manual_seed(2))
    state0 = {k: v.clone() for k, v in policy.state_dict().items()}
    losses = {}
    for a in (None, amp):
        m = rlcf.create_method("rlcf", policy, reward, steps=2, lr=1e-3, k=3, selection=1.0, amp=a)
        with torch.no_grad():
            out = m(image)
        assert isinstance(out, str)
        losses[a] = m.last_info["losses"]
        for k, v in policy.state_dict().items():
            assert torch.equal(v, state0[k]), k
    assert m.last_info["precision"] == amp
    # the same candidates and rewards, so the first loss agrees to the autocast's precision
    assert losses[amp][0] == pytest.approx(losses[None][0], abs=0.02 if amp == "fp16" else 0.1)
    if amp == "fp16":
        m = rlcf.create_method("rlcf", policy, reward, steps=1, lr=1e-3, k=3, selection=1.0, amp="fp16")
        handle, fired = _inject_inf_once(policy)
        with torch.no_grad():
            m(image)
        handle.remove()
        assert fired and m.last_info["skipped_steps"] == 1
        for k, v in policy.state_dict().items():
            assert torch.equal(v, state0[k]), k
