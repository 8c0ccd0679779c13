"""Text towers behind one interface: open_clip CLIP (causal, EOT pooling) and CustomTextCLIP with a SigLIP-style
text tower (bidirectional, last-position pooling: the full context runs); prompt and encoder tuning on both."""
import pytest
import torch
import torch.nn.functional as F

import rlcf
from conftest import CLASSNAMES, make_clip
from tasks.classification.policies import EncoderPolicy, PromptPolicy, class_prompts
from tasks.common.text import text_features, text_tower


@pytest.mark.parametrize("name,causal", [("RLCF-Tiny-Test", True), ("RLCF-Tiny-Bidir", False)])
def test_tower_features_equal_encode_text(name, causal):
    clip, _, tok = make_clip(name)
    tower = text_tower(clip)
    assert tower.causal is causal and tower.context_length == tok(["x"]).shape[1]
    tokens = tok(class_prompts(CLASSNAMES))
    with torch.no_grad():
        ref = clip.encode_text(tokens)
        assert torch.allclose(text_features(clip, tokens), ref, atol=1e-5)
        emb = tower.token_embedding(tokens)
        assert torch.allclose(tower.features_from_embeddings(emb, tower.pool_index(tokens)), ref, atol=1e-5)
        if causal:   # exact truncation after the last EOT
            n = int(tower.end_index(tokens).max()) + 1
            assert torch.allclose(tower.features_from_embeddings(emb[:, :n], tower.pool_index(tokens)), ref, atol=1e-5)
        else:
            assert (tower.pool_index(tokens) == tokens.shape[1] - 1).all()
            with pytest.raises(ValueError, match="full context"):
                tower.features_from_embeddings(emb[:, :8], tower.pool_index(tokens))


@pytest.mark.parametrize("name", ["RLCF-Tiny-Test", "RLCF-Tiny-Bidir"])
def test_prompt_and_encoder_tuning_on_both_towers(name, views):
    clip, _, tok = make_clip(name)
    prompt = PromptPolicy(clip, CLASSNAMES, tok)
    with torch.no_grad():   # the context initialised from "a photo of a" reproduces the plain prompts
        ref = F.normalize(clip.encode_text(tok(class_prompts(CLASSNAMES))), dim=-1)
        assert torch.allclose(prompt.class_features(), ref, atol=1e-5)
    assert prompt.n_ctx == 4
    rclip, _, rtok = make_clip("RLCF-Tiny-Reward", 1)
    reward = rlcf.CLIPReward(rclip, rtok)
    reward.set_candidates(class_prompts(CLASSNAMES))
    for policy, lr in ((prompt, 5e-2), (EncoderPolicy(clip, CLASSNAMES, tok), 1e-2)):
        state = {k: v.clone() for k, v in policy.state_dict().items()}
        with torch.no_grad():
            out = rlcf.create_method("rlcf", policy, reward, lr=lr, selection=0.25)(views)
        assert torch.isfinite(out).all() and not torch.equal(out, rlcf.adapt(policy, views, "zeroshot"))
        assert all(torch.equal(v, state[k]) for k, v in policy.state_dict().items())
