"""LoRA through peft: checkpoints of the adapters round-trip, the former hand-written adapters' state converts to
peft's (checked against the LoRA formula folded into the weights by hand), clear errors on mismatches, and the
exported captioner is a plain one with the policy adapter merged."""
from __future__ import annotations

import copy

import pytest
import torch

from tasks.caption_rl.loop import export_captioner, load_trainable_state, trainable_state
from tasks.caption_rl.lora import add_lora, convert_legacy_lora_state, load_lora_state_dict, lora_state_dict, set_active
from tasks.captioning.checkpoint import load_captioner, tiny_captioner, tiny_opt


@pytest.fixture(autouse=True)
def _one_thread():
    torch.set_num_threads(1)


IDS = torch.tensor([[2, 5, 7, 9, 11, 4]])


def _legacy_state(lm, adapters=("policy", "value"), r=2, seed=0):
    """The former format: ``<module>.lora_A.<adapter>.weight [r, in]`` / ``lora_B [out, r]`` per wrapped layer."""
    g = torch.Generator().manual_seed(seed)
    state = {}
    for name, mod in lm.named_modules():
        if name.endswith(("q_proj", "v_proj")):
            for a in adapters:
                state[f"{name}.lora_A.{a}.weight"] = torch.randn(r, mod.in_features, generator=g) * 0.3
                state[f"{name}.lora_B.{a}.weight"] = torch.randn(mod.out_features, r, generator=g) * 0.3
    return state


def test_legacy_state_converts_to_peft_and_computes_the_same_function():
    base = tiny_opt(30, hidden=16, layers=2, heads=2, ffn=32, seed=0)
    legacy = _legacy_state(base)
    conv = convert_legacy_lora_state(legacy)
    assert sorted(conv) == ["policy", "value"]
    assert "base_model.model.model.decoder.layers.1.self_attn.v_proj.lora_B.weight" in conv["policy"]
    folded = copy.deepcopy(base)                                         # W + (alpha / r) B A, by hand
    with torch.no_grad():
        for name, mod in folded.named_modules():
            if name.endswith(("q_proj", "v_proj")):
                mod.weight += (4 / 2) * legacy[f"{name}.lora_B.policy.weight"] @ legacy[f"{name}.lora_A.policy.weight"]
    lm = add_lora(base, ("q_proj", "v_proj"), ("policy", "value"), r=2, alpha=4)
    load_lora_state_dict(lm, legacy)                                     # converted on the fly
    set_active(lm, ("policy",))
    torch.testing.assert_close(lm(input_ids=IDS).logits, folded(input_ids=IDS).logits, atol=1e-5, rtol=1e-5)
    with pytest.raises(KeyError, match="not a legacy LoRA key"):
        convert_legacy_lora_state({"model.decoder.x.weight": torch.zeros(1)})


def test_mismatches_are_clear_errors():
    lm = add_lora(tiny_opt(30, hidden=16, layers=1, heads=2, ffn=32, seed=0), adapters=("policy",), r=2, alpha=4)
    with pytest.raises(KeyError, match="adapters differ.*captioner.lora"):
        load_lora_state_dict(lm, _legacy_state(tiny_opt(30, hidden=16, layers=1, heads=2, ffn=32), ("policy", "value")))
    with pytest.raises(ValueError, match="captioner.lora.r"):
        load_lora_state_dict(lm, _legacy_state(tiny_opt(30, hidden=16, layers=1, heads=2, ffn=32), ("policy",), r=4))


def test_trainable_state_round_trip_and_legacy_resume(tmp_path):
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
    # an old rl-latest.pt: the LoRA part in the former flat format
    legacy = {k.replace("base_model.model.", "").replace(".lora_A.weight", f".lora_A.{a}.weight")
              .replace(".lora_B.weight", f".lora_B.{a}.weight"): v
              for a, sd in state["lora"].items() for k, v in sd.items()}
    old = make()
    load_trainable_state(old, {"mapper": state["mapper"], "lora": legacy})
    assert old.generate(x, 2) == cap.generate(x, 2)
    # export: a plain captioner whose LM has the policy adapter folded in
    export_captioner(cap, tmp_path / "captioner-rl.pt")
    plain = load_captioner(tmp_path / "captioner-rl.pt")
    assert type(plain.lm).__name__ == "OPTForCausalLM" and not any("lora" in k for k in plain.lm.state_dict())
    set_active(cap.lm, ("policy",))
    ids, mask = cap.encode_captions(texts)
    torch.testing.assert_close(plain.token_logprobs(x[:1].repeat(3, 1), ids, mask)[0],
                               cap.token_logprobs(x[:1].repeat(3, 1), ids, mask)[0], atol=1e-5, rtol=1e-5)
    assert lora_state_dict(plain.lm) == {}
