"""LoRA through peft: checkpoints of the adapters round-trip (checked against the LoRA formula folded into the weights
by hand), clear errors on mismatches, and the exported captioner is a plain one with the policy adapter merged."""
from __future__ import annotations

import copy

import pytest
import torch

from tasks.caption_rl.loop import export_captioner, load_trainable_state, trainable_state
from tasks.caption_rl.lora import add_lora, load_lora_state_dict, lora_state_dict, set_active
from tasks.captioning.checkpoint import load_captioner, tiny_captioner, tiny_opt


@pytest.fixture(autouse=True)
def _one_thread():
    torch.set_num_threads(1)


IDS = torch.tensor([[2, 5, 7, 9, 11, 4]])


def _trained(lm, seed=0):
    """``lm`` with every LoRA parameter moved off its initialisation (a fresh adapter's ``B`` is zero)."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for n, p in lm.named_parameters():
            if ".lora_" in n:
                p.copy_(torch.randn(p.shape, generator=g) * 0.3)
    return lm


def test_adapter_state_round_trips_and_computes_the_lora_formula():
    base = tiny_opt(30, hidden=16, layers=2, heads=2, ffn=32, seed=0)
    folded = copy.deepcopy(base)
    lm = _trained(add_lora(base, ("q_proj", "v_proj"), ("policy", "value"), r=2, alpha=4))
    state = lora_state_dict(lm)
    assert sorted(state) == ["policy", "value"]
    assert "base_model.model.model.decoder.layers.1.self_attn.v_proj.lora_B.weight" in state["policy"]
    with torch.no_grad():                                                # W + (alpha / r) B A, by hand
        for name, mod in folded.named_modules():
            if name.endswith(("q_proj", "v_proj")):
                key = f"base_model.model.{name}.lora_{{}}.weight"
                mod.weight += (4 / 2) * state["policy"][key.format("B")] @ state["policy"][key.format("A")]
    other = add_lora(tiny_opt(30, hidden=16, layers=2, heads=2, ffn=32, seed=0), ("q_proj", "v_proj"),
                     ("policy", "value"), r=2, alpha=4)
    load_lora_state_dict(other, state)
    set_active(other, ("policy",))
    torch.testing.assert_close(other(input_ids=IDS).logits, folded(input_ids=IDS).logits, atol=1e-5, rtol=1e-5)


def test_mismatches_are_clear_errors():
    lm = add_lora(tiny_opt(30, hidden=16, layers=1, heads=2, ffn=32, seed=0), adapters=("policy",), r=2, alpha=4)

    def state_of(adapters, r):
        return lora_state_dict(add_lora(tiny_opt(30, hidden=16, layers=1, heads=2, ffn=32), adapters=adapters, r=r))

    with pytest.raises(KeyError, match="adapters differ.*captioner.lora"):
        load_lora_state_dict(lm, state_of(("policy", "value"), 2))
    with pytest.raises(ValueError, match="captioner.lora.r"):
        load_lora_state_dict(lm, state_of(("policy",), 4))


def test_trainable_state_round_trip_and_export(tmp_path):
    texts = ["a red circle", "a green square", "two stars"]

    def make():
        cap = tiny_captioner(texts, prefix_dim=8, hidden=16, heads=2, seed=0, train_lm=False, max_new_tokens=5)
        cap.lm = add_lora(cap.lm, adapters=("policy", "value"), r=2, alpha=4)
        return cap

    cap = make()
    with torch.no_grad():
        for p in cap.parameters():
            if p.requires_grad:
                p.add_(0.2 * torch.randn_like(p))
    state = trainable_state(cap)
    assert set(state["lora"]) == {"policy", "value"}
    other = make()
    load_trainable_state(other, state)
    x = torch.randn(2, 8)
    assert other.generate(x, 2) == cap.generate(x, 2)
    # export: a plain captioner whose LM has the policy adapter folded in
    export_captioner(cap, tmp_path / "captioner-rl.pt")
    plain = load_captioner(tmp_path / "captioner-rl.pt")
    assert type(plain.lm).__name__ == "OPTForCausalLM" and not any("lora" in k for k in plain.lm.state_dict())
    set_active(cap.lm, ("policy",))
    ids, mask = cap.encode_captions(texts)
    torch.testing.assert_close(plain.token_logprobs(x[:1].repeat(3, 1), ids, mask)[0],
                               cap.token_logprobs(x[:1].repeat(3, 1), ids, mask)[0], atol=1e-5, rtol=1e-5)
    assert lora_state_dict(plain.lm) == {}
