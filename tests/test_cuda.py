"""CUDA checks (skipped without a GPU; ``bash benchmarks/gpu_check.sh`` runs them): every registered method in
fp16 and bf16 on CUDA against fp32 on CPU for the same inputs, and GPU memory back to its baseline after 50
samples (no state leaks from the episodic reset)."""
from __future__ import annotations

import pytest
import torch

import rlcf
from conftest import CLASSNAMES, make_clip
from tasks.classification.policies import EncoderPolicy, PromptPolicy, PrototypePolicy, class_prompts

KINDS = {"prompt": PromptPolicy, "encoder": EncoderPolicy, "prototype": PrototypePolicy}

pytestmark = [pytest.mark.cuda,
              pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU (benchmarks/gpu_check.sh)")]
TOL = {"fp16": 0.02, "bf16": 0.1}   # as tests/test_mixed_precision.py


def build(kind: str, name: str, device: str, amp):
    clip, _, tok = make_clip()
    policy = KINDS[kind](clip, CLASSNAMES, tok).to(device)
    rclip, _, rtok = make_clip("RLCF-Tiny-Reward", 1)
    reward = rlcf.CLIPReward(rclip.to(device), rtok)
    reward.set_candidates(class_prompts(CLASSNAMES))
    cls = rlcf.get_method(name)
    over = {"selection": 0.25, "amp": amp}
    if cls.default_config.steps > 0:
        over["lr"] = 1e-3 if kind == "encoder" else 1e-2
    return rlcf.create_method(name, policy, reward if cls.needs_reward else None, **over)


def _pairs():
    clip, _, tok = make_clip()
    out = []
    for kind, cls in KINDS.items():
        p = cls(clip, CLASSNAMES, tok)
        out += [(n, kind) for n in rlcf.list_methods() if rlcf.get_method(n).supports(p)]
    return out


@pytest.mark.parametrize("name,kind", _pairs())
@pytest.mark.parametrize("amp", ["fp16", "bf16"])
def test_cuda_low_precision_matches_cpu_fp32(name, kind, amp, views):
    with torch.no_grad():
        ref = build(kind, name, "cpu", None)(views)
        method = build(kind, name, "cuda", amp)
        out = method(views.cuda())
    assert method.precision == amp and out.device.type == "cuda" and torch.isfinite(out).all()
    assert (out.cpu().softmax(-1) - ref.softmax(-1)).abs().max() <= TOL[amp]
    if amp == "fp16" and method.config.steps > 0:
        assert method.scaler is not None and str(method.scaler._device) == "cuda"


@pytest.mark.parametrize("name,kind", _pairs())
def test_cuda_memory_returns_to_baseline_after_50_samples(name, kind, views):
    method = build(kind, name, "cuda", "auto")
    x = views.cuda()
    with torch.no_grad():
        method(x)                             # warm-up: lazily created state (GradScaler, caches)
        torch.cuda.synchronize()
        base = torch.cuda.memory_allocated()
        for i in range(50):
            method(x + 0.01 * i)
        torch.cuda.synchronize()
    if not method.episodic:                   # online caches grow by design (TDA: at most capacity x classes)
        return
    assert torch.cuda.memory_allocated() <= base + 64 * 1024


@pytest.mark.parametrize("kind", ["prompt", "encoder"])
@pytest.mark.parametrize("amp", [None, "fp16"])
def test_cuda_batches_in_a_row_equal_one_at_a_time(kind, amp, views):
    """Batched episodes on CUDA (fused AdamW, the kept workspace, fp16 with the run's GradScaler): two batches in a
    row, the second on the reused workspace, each equal one sample at a time (fp32 1e-4, fp16 to its rounding)."""
    g = torch.Generator().manual_seed(1)
    first = [torch.randn(views.shape, generator=g).cuda() for _ in range(3)]
    second = [torch.randn(views.shape, generator=g).cuda() for _ in range(3)]
    method = build(kind, "rlcf", "cuda", amp)
    with torch.no_grad():
        alone = [method(x) for x in second]
        method.scaler = None          # the batch starts from a fresh scaler, as the samples above did
        method.forward_batch(first)
        ws = method.stacked_workspace
        together = method.forward_batch(second)
    assert method.stacked_workspace is ws and ws.optimizer.defaults.get("fused") is True
    tol = 1e-4 if amp is None else 0.02
    for a, t in zip(alone, together):
        assert t.device.type == "cuda" and torch.isfinite(t).all()
        assert torch.allclose(a, t, atol=tol * max(1.0, float(a.abs().max())), rtol=0), (a - t).abs().max()
