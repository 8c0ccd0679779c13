"""VLRM A2C pieces against hand computations: normalised advantages (eq. 3), the probability-weighted policy
loss (eq. 4), the value loss (eq. 2), the value head's gradient isolation, the warm-up schedule, LoRA."""
from __future__ import annotations

import math

import pytest
import torch

from tasks.caption_rl.a2c import (
    ValueHead,
    assign_isolated_grads,
    normalize_advantages,
    probability_policy_loss,
    value_loss,
    warmup_constant_schedule,
)
from tasks.caption_rl.lora import active_adapters, add_lora, lora_parameters, merge_lora, set_active


@pytest.fixture(autouse=True)
def _one_thread():
    torch.set_num_threads(1)


MASK = torch.tensor([[1, 1, 1, 0], [1, 0, 0, 0]])


def test_advantages_normalised_over_batch_and_sequence():
    adv = torch.tensor([[1.0, 2.0, 3.0, 99.0], [4.0, -7.0, 0.0, 0.0]])   # padding values must not count
    mean = 2.5
    std = math.sqrt(((1.5 ** 2) * 2 + (0.5 ** 2) * 2) / 3)               # unbiased, over the 4 valid tokens
    want = torch.tensor([[(1 - mean), (2 - mean), (3 - mean), 0.0], [(4 - mean), 0.0, 0.0, 0.0]]) / (std + 1e-5)
    want = want * MASK
    torch.testing.assert_close(normalize_advantages(adv, MASK), want)


def test_probability_weighted_loss_and_its_gradient():
    logp = torch.log(torch.tensor([[0.5, 0.25, 0.1, 1.0], [0.8, 0.3, 1.0, 1.0]])).requires_grad_(True)
    m = torch.tensor([[1.0, -2.0, 3.0, 5.0], [0.5, 9.0, 0.0, 0.0]])
    loss = probability_policy_loss(logp, m, MASK)
    # row 0: -(0.5*1 + 0.25*-2 + 0.1*3)/3 ; row 1: -(0.8*0.5)/1 ; batch mean
    want = (-(0.5 - 0.5 + 0.3) / 3 - 0.4) / 2
    assert abs(float(loss.detach()) - want) < 1e-6
    loss.backward()
    # d loss / d logp_k = -(1/B)(1/n_b) p_k M_k (through p = exp(logp)); zero on padding
    g = torch.tensor([[-0.5 * 1 / 6, 0.25 * 2 / 6, -0.1 * 3 / 6, 0.0], [-0.8 * 0.5 / 2, 0.0, 0.0, 0.0]])
    torch.testing.assert_close(logp.grad, g)


def test_value_loss_by_hand():
    v = torch.tensor([[1.0, 0.0, 2.0, 7.0], [3.0, 1.0, 1.0, 1.0]], requires_grad=True)
    r = torch.tensor([[0.0, 0.0, 0.0, 0.0], [1.0, 0.0, 0.0, 0.0]])
    loss = value_loss(v, r, MASK)
    assert abs(float(loss.detach()) - ((1 + 0 + 4) / 3 + 4 / 1) / 2) < 1e-6


def test_value_head_gets_gradient_only_from_the_value_loss():
    h = 8
    trunk = torch.nn.Linear(4, h)                     # stands for the policy's LM
    head = ValueHead(h, width=16)
    x = torch.randn(2, 3, 4)
    hidden = trunk(x)
    logp = torch.log_softmax(hidden, -1)[..., 0]      # policy token log-probs (with grad into the trunk)
    values = head(hidden.detach())
    mask = torch.ones(2, 3)
    returns = torch.randn(2, 3)
    m = normalize_advantages(returns - values.detach(), mask)
    lp, lv = probability_policy_loss(logp, m, mask), value_loss(values, returns, mask)
    def grads(loss, module):
        return torch.autograd.grad(loss, list(module.parameters()), allow_unused=True, retain_graph=True)

    assert all(g is None for g in grads(lp, head))
    assert all(g is None for g in grads(lv, trunk))
    norms = assign_isolated_grads([(lp, trunk.parameters()), (lv, head.parameters())])
    assert norms["grad_norm/0"] > 0 and norms["grad_norm/1"] > 0
    want = torch.autograd.grad(value_loss(head(hidden.detach()), returns, mask), list(head.parameters()))
    for p, g in zip(head.parameters(), want):
        torch.testing.assert_close(p.grad, g)


def test_warmup_then_constant():
    p = torch.nn.Parameter(torch.zeros(1))
    opt = torch.optim.Adam([p], lr=1e-5)
    sched = warmup_constant_schedule(opt, 20)
    lrs = []
    for _ in range(25):
        lrs.append(opt.param_groups[0]["lr"])
        opt.step()
        sched.step()
    assert abs(lrs[0] - 1e-5 / 20) < 1e-12 and abs(lrs[9] - 1e-5 / 2) < 1e-12
    assert all(abs(x - 1e-5) < 1e-12 for x in lrs[19:])


def test_lora_adapters_switch_and_merge():
    from tasks.captioning.checkpoint import tiny_opt

    lm = tiny_opt(30, hidden=16, layers=1, heads=2, ffn=32, seed=0)
    ids = torch.tensor([[2, 5, 7, 9]])
    base = lm(input_ids=ids).logits
    lm = add_lora(lm, ("q_proj", "v_proj"), adapters=("policy", "value"), r=2, alpha=4)
    torch.testing.assert_close(lm(input_ids=ids).logits, base)          # B = 0: unchanged
    for p in lora_parameters(lm, "policy") + lora_parameters(lm, "value"):
        torch.nn.init.normal_(p, std=0.5)
    set_active(lm, ("policy",))
    pol = lm(input_ids=ids).logits
    with active_adapters(lm, ()):
        torch.testing.assert_close(lm(input_ids=ids).logits, base)
    with active_adapters(lm, ("policy", "value")):
        both = lm(input_ids=ids).logits
    assert not torch.allclose(pol, base) and not torch.allclose(both, pol)
    torch.testing.assert_close(lm(input_ids=ids).logits, pol)          # restored after the context
    assert len(lora_parameters(lm, "value")) == 4                       # A and B on q_proj and v_proj
    # switching never freezes an adapter the optimiser trains (peft's set_adapter would)
    assert all(p.requires_grad for p in lora_parameters(lm, "policy") + lora_parameters(lm, "value"))
    merged = merge_lora(lm, "policy")
    assert type(merged).__name__ == "OPTForCausalLM"                   # a plain LM again
    torch.testing.assert_close(merged(input_ids=ids).logits, pol, atol=1e-5, rtol=1e-5)


def test_lora_is_peft_and_computes_the_lora_formula():
    """peft's adapters compute ``W x + (alpha / r) B A x`` on the targeted layers (checked by folding ``B A`` into a
    copy of the base weights by hand)."""
    import copy

    from peft import PeftModel

    from tasks.captioning.checkpoint import tiny_opt

    lm = tiny_opt(30, hidden=16, layers=1, heads=2, ffn=32, seed=0)
    ref = copy.deepcopy(lm)
    lm = add_lora(lm, ("q_proj",), adapters=("policy",), r=2, alpha=6)
    assert isinstance(lm, PeftModel)
    a, b = lora_parameters(lm, "policy")
    torch.nn.init.normal_(a, std=0.3)
    torch.nn.init.normal_(b, std=0.3)
    with torch.no_grad():
        q = ref.model.decoder.layers[0].self_attn.q_proj
        q.weight += (6 / 2) * b @ a
    ids = torch.tensor([[2, 5, 7, 9, 11]])
    torch.testing.assert_close(lm(input_ids=ids).logits, ref(input_ids=ids).logits, atol=1e-5, rtol=1e-5)
