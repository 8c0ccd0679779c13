"""Snapshot/restore, momentum reset point, CLIP loading, text truncation and caching, views, AMP."""
import numpy as np
import pytest
import torch
from PIL import Image

import rlcf
from conftest import CLASSNAMES, FIXTURES, make_clip
from rlcf.episodic import MomentumReset, restore, snapshot
from tasks.classification.policies import EncoderPolicy, PromptPolicy, class_prompts, encode_texts
from tasks.classification.views import ViewTransform
from tasks.common.clip import canonical_arch, load_clip
from tasks.common.data import MissingDataError


def test_snapshot_restores_params_buffers_and_optimizer_bit_exactly():
    model = torch.nn.Sequential(torch.nn.Linear(4, 4), torch.nn.BatchNorm1d(4), torch.nn.Linear(4, 2))
    model[2].requires_grad_(False)
    opt = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=0.1)
    snap = snapshot(model, opt)
    full0 = {k: v.clone() for k, v in model.state_dict().items()}
    opt0 = opt.state_dict()
    model.train()
    for _ in range(3):
        loss = model(torch.randn(8, 4)).pow(2).mean()
        opt.zero_grad(); loss.backward(); opt.step()
    assert not torch.equal(model[1].running_mean, full0["1.running_mean"])  # BN stats moved
    restore(model, snap, opt)
    for k, v in model.state_dict().items():
        assert torch.equal(v, full0[k]), k
    assert opt.state_dict()["state"] == opt0["state"] == {}
    assert set(snap.params) == {"0.weight", "0.bias", "1.weight", "1.bias"}  # no full-model copy


def test_momentum_reset_point_follows_official_rule():
    lin = torch.nn.Linear(2, 1, bias=False)
    with torch.no_grad():
        lin.weight.fill_(0.0)
    snap = snapshot(lin)
    mom = MomentumReset(snap, momentum=0.5, update_freq=2, update_w=1.0)
    for value in (1.0, 3.0):
        with torch.no_grad():
            lin.weight.fill_(value)          # the "adapted" weights of this sample
        mom.update(lin)
        restore(lin, snap)
    # ema: 0 -> 0.5 -> 0.5*0.5 + 0.5*3 = 1.75; reset point moved to the ema after 2 samples
    assert torch.allclose(lin.weight, torch.full((1, 2), 1.75))
    mom2 = MomentumReset(snapshot(lin), momentum=0.5, update_freq=1, update_w=0.5)
    with torch.no_grad():
        lin.weight.fill_(3.75)
    mom2.update(lin)   # ema = 0.5*1.75 + 0.5*3.75 = 2.75; reset = 0.5*1.75 + 0.5*2.75 = 2.25
    assert torch.allclose(mom2.snap.params["weight"], torch.full((1, 2), 2.25))


def test_momentum_method_moves_reset_point(views):
    clip, _, tok = make_clip()
    policy = EncoderPolicy(clip, CLASSNAMES, tok)
    rclip, _, rtok = make_clip("RLCF-Tiny-Reward", 1)
    reward = rlcf.CLIPReward(rclip, rtok); reward.set_candidates(class_prompts(CLASSNAMES))
    before = {n: p.clone() for n, p in policy.named_parameters() if p.requires_grad}
    m = rlcf.create_method("rlcf", policy, reward, lr=1e-2, selection=0.25, momentum=0.9, update_freq=2)
    m(views); m(views)
    moved = [n for n, p in policy.named_parameters() if p.requires_grad and not torch.equal(p, before[n])]
    assert moved, "after update_freq samples the reset point must move towards the EMA"


def test_text_truncation_and_chunking_equal_plain_computation():
    clip, _, tok = make_clip()
    prompts = class_prompts(CLASSNAMES)
    with torch.no_grad():
        plain = torch.nn.functional.normalize(clip.encode_text(tok(prompts)), dim=-1)
    fast = encode_texts(clip, tok(prompts), chunk=3, truncate=True)
    assert torch.allclose(fast, plain, atol=1e-5)   # tolerance: fp32 summation order only
    policy = PromptPolicy(clip, CLASSNAMES, tok, text_chunk=2)
    full = PromptPolicy(clip, CLASSNAMES, tok, truncate=False)
    with torch.no_grad():
        assert policy.token_suffix.shape[1] < full.token_suffix.shape[1]
        assert torch.allclose(policy.class_features(), plain, atol=1e-5)
        assert torch.allclose(full.class_features(), plain, atol=1e-5)


def test_encoder_policy_caches_text_features():
    clip, _, tok = make_clip()
    policy = EncoderPolicy(clip, CLASSNAMES, tok)
    calls = []
    clip.transformer.register_forward_hook(lambda *a: calls.append(1))
    policy(torch.randn(2, 3, 32, 32)); policy(torch.randn(2, 3, 32, 32))
    assert calls == []   # the text tower never runs after construction
    trainable = set(policy.trainable_parameters())
    assert trainable and all(n.startswith("clip.visual.") for n in trainable)
    assert trainable == {n for n, _ in policy.named_parameters() if n.startswith("clip.visual.")}
    norm_only = EncoderPolicy(make_clip()[0], CLASSNAMES, tok, norm_only=True)
    names = list(norm_only.trainable_parameters())
    assert names and all(".ln" in n or "norm" in n for n in names), names


def test_checkpoint_round_trip_and_errors(tmp_path):
    clip, _, tok = make_clip()
    path = tmp_path / "tiny.pt"
    torch.save(clip.state_dict(), path)
    loaded, preprocess, _ = load_clip("RLCF-Tiny-Test", str(path), config_file=FIXTURES / "RLCF-Tiny-Test.json")
    x = torch.randn(2, 3, 32, 32)
    with torch.no_grad():
        assert torch.equal(loaded.encode_image(x), clip.encode_image(x))
    with pytest.raises(MissingDataError, match=str(tmp_path / "missing.pt")):
        load_clip("RLCF-Tiny-Test", str(tmp_path / "missing.pt"))
    with pytest.raises(KeyError, match="ViT-B-16"):
        load_clip("ViT-Q/99")
    with pytest.raises(KeyError, match="Known tags"):
        load_clip("ViT-B-16", "no-such-tag")
    assert canonical_arch("ViT-B/16") == "ViT-B-16"
    assert canonical_arch("ViT-L/14@336px") == "ViT-L-14-336"


def test_coop_ctx_loading(tmp_path):
    clip, _, tok = make_clip()
    policy = PromptPolicy(clip, CLASSNAMES, tok)
    ctx = torch.randn_like(policy.ctx)
    torch.save({"state_dict": {"ctx": ctx, "token_prefix": torch.zeros(1)}}, tmp_path / "coop.pth")
    policy.load_coop(str(tmp_path / "coop.pth"))
    assert torch.equal(policy.ctx, ctx)
    torch.save({"state_dict": {"ctx": torch.randn(16, 32)}}, tmp_path / "bad.pth")
    with pytest.raises(ValueError, match="shape"):
        policy.load_coop(str(tmp_path / "bad.pth"))


def test_views_clean_view_and_determinism():
    img = Image.fromarray((torch.rand(40, 50, 3) * 255).byte().numpy())
    vt = ViewTransform(n_views=5, resolution=32)
    a, b = vt(img, seed=7), vt(img, seed=7)
    assert a.shape == (5, 3, 32, 32) and torch.equal(a, b)
    assert not torch.equal(a[1], vt(img, seed=8)[1])
    assert torch.equal(a[0], vt(img, seed=8)[0])     # view 0 is the deterministic clean view
    assert ViewTransform(n_views=3, resolution=32, augmix=True)(img, seed=1).shape == (3, 3, 32, 32)
    with pytest.raises(TypeError, match="PIL.Image, a tensor or a numpy array"):
        vt("not an image")
    # tensors and numpy arrays give the same views as the PIL image they hold (issue: ViewTransform too narrow)
    arr = np.array(img)
    assert torch.equal(vt(arr, seed=7), a)
    assert torch.equal(vt(torch.from_numpy(arr).permute(2, 0, 1), seed=7), a)
    assert torch.equal(vt(torch.from_numpy(arr).permute(2, 0, 1).float() / 255, seed=7), a)


def test_bf16_autocast_on_cpu_when_asked(views):
    """amp=bf16 really runs the towers in bf16 (a hook sees bf16 activations during the step and the
    prediction), the prediction stays close to fp32, and the state is restored bit-exactly."""
    clip, _, tok = make_clip()
    policy = PromptPolicy(clip, CLASSNAMES, tok)
    state0 = {k: v.clone() for k, v in policy.state_dict().items()}
    seen = []
    clip.transformer.resblocks[0].mlp.c_fc.register_forward_hook(lambda m, i, o: seen.append(o.dtype))
    out = rlcf.adapt(policy, views, "tpt", amp="bf16", selection=0.25)
    assert seen and set(seen) == {torch.bfloat16}
    ref = rlcf.adapt(policy, views, "tpt", amp=None, selection=0.25)
    assert seen[-1] == torch.float32
    assert (out.softmax(-1) - ref.softmax(-1)).abs().max() < 0.1 and not torch.equal(out, ref)
    for k, v in policy.state_dict().items():
        assert torch.equal(v, state0[k])