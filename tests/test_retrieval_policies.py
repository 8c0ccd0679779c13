"""Retrieval policies: what each direction tunes, exact reset, text features, the text-query reward."""
import pytest
import torch
from conftest import make_clip

import rlcf
from tasks.retrieval.policies import (
    ImageToTextPolicy,
    TextQueryReward,
    TextToImagePolicy,
    encode_text_gallery,
    encode_tokens,
)

CAPTIONS = [f"a {c} {s}" for c in ("red", "green", "blue", "tiny") for s in ("circle", "square", "star")]


@pytest.fixture(autouse=True)
def _one_thread():
    """Tiny models: one intra-op thread is faster, and much faster when the 2 shared cores are busy."""
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)


def adapted_state(method, sample):
    """Parameters right after adaptation (the final reset skipped), then the normal call."""
    init = {n: p.detach().clone() for n, p in method.policy.named_parameters()}
    reset = method.reset
    method.reset = lambda: None
    with torch.no_grad():
        method(sample)
    after = {n: p.detach().clone() for n, p in method.policy.named_parameters()}
    method.reset = reset
    method.reset()
    for n, p in method.policy.named_parameters():       # reset restores bit-exactly
        assert torch.equal(p, init[n]), n
    return {n for n in init if not torch.equal(init[n], after[n])}


def test_encode_tokens_truncated_equals_encode_text():
    clip, _, tok = make_clip()
    tokens = tok(["a photo of a cat", "a much longer caption about a small dog on a red sofa"])
    with torch.no_grad():
        full = clip.encode_text(tokens)
        assert torch.allclose(encode_tokens(clip, tokens), full, atol=1e-5)
        gallery = encode_text_gallery(clip, tok, ["a photo of a cat"])
        assert torch.allclose(gallery, torch.nn.functional.normalize(full[:1]), atol=1e-5)


def test_image_to_text_tunes_only_the_visual_tower():
    clip, _, tok = make_clip()
    rclip, _, rtok = make_clip("RLCF-Tiny-Reward", 1)
    reward = rlcf.CLIPReward(rclip, rtok)
    reward.set_candidates(CAPTIONS)
    policy = ImageToTextPolicy(clip, encode_text_gallery(clip, tok, CAPTIONS))
    assert {n for n, p in policy.named_parameters() if p.requires_grad} == \
        {n for n, _ in policy.named_parameters() if n.startswith("clip.visual.")}
    method = rlcf.create_method("rlcf", policy, reward, steps=2, lr=1e-2, k=5, selection=1.0)
    image = torch.randn(3, 32, 32)
    changed = adapted_state(method, image)
    assert changed and all(n.startswith("clip.visual.") for n in changed)
    with torch.no_grad():
        out = method(image)
    assert out.shape == (len(CAPTIONS),) and torch.isfinite(out).all()
    assert policy.logits(policy.encode_query(image[None])).shape == (1, len(CAPTIONS))


@pytest.mark.parametrize("train_logit_scale", [True, False])
def test_text_to_image_tunes_only_the_text_side(train_logit_scale):
    clip, _, tok = make_clip()
    rclip, _, rtok = make_clip("RLCF-Tiny-Reward", 1)
    images = torch.randn(14, 3, 32, 32)
    with torch.no_grad():
        gallery = clip.encode_image(images)
    reward = rlcf.CLIPReward(rclip, rtok)
    reward.set_candidates(images)                       # resized 32 -> 48 for the reward CLIP
    wrapped = TextQueryReward(reward)
    policy = TextToImagePolicy(clip, gallery, train_logit_scale=train_logit_scale)
    trainable = {n for n, p in policy.named_parameters() if p.requires_grad}
    assert not any(n.startswith("clip.visual.") for n in trainable)
    assert {"clip.token_embedding.weight", "clip.positional_embedding", "clip.ln_final.weight",
            "clip.text_projection"} <= trainable
    assert ("clip.logit_scale" in trainable) == train_logit_scale
    method = rlcf.create_method("rlcf", policy, wrapped, steps=2, lr=1e-2, k=4, selection=1.0)
    text = "a red circle"
    tokens = tok([text])
    wrapped.expect(tokens, text)
    changed = adapted_state(method, tokens)
    assert changed and not any(n.startswith("clip.visual.") for n in changed)
    assert "clip.token_embedding.weight" in changed and "clip.transformer.resblocks.0.attn.in_proj_weight" in changed
    assert ("clip.logit_scale" in changed) == train_logit_scale
    wrapped.expect(tokens, text)
    with torch.no_grad():
        out = method(tokens)
    assert out.shape == (14,) and torch.isfinite(out).all()


def test_text_query_reward_encodes_the_announced_caption():
    rclip, _, rtok = make_clip("RLCF-Tiny-Reward", 1)
    reward = rlcf.CLIPReward(rclip, rtok)
    reward.set_candidates(torch.randn(5, 3, 48, 48))
    wrapped = TextQueryReward(reward)

    def other_tok(texts):                                 # a policy with another tokenizer
        return torch.tensor([[7, 8, 9, 0]] * len(texts))

    with pytest.raises(RuntimeError, match="expect"):
        wrapped.set_query(other_tok(["a cat"]))
    wrapped.expect(other_tok(["a cat"]), "a cat")
    with pytest.raises(RuntimeError, match="not those announced"):
        wrapped.set_query(torch.tensor([[1, 2, 3, 0]]))
    wrapped.expect(other_tok(["a cat"]), "a cat")
    wrapped.set_query(other_tok(["a cat"]))
    assert torch.allclose(reward.query_feats, reward.encode_texts(["a cat"]))
    assert wrapped(torch.tensor([[0, 1]])).shape == (1, 2)
