"""Retrieval policies: what each direction tunes, exact reset, text features, the text-query reward."""
import pytest
import torch
from conftest import make_clip

import rlcf
from tasks.retrieval.policies import ImageToTextPolicy, TextToImagePolicy, encode_text_gallery, encode_tokens

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
    assert set(policy.trainable_parameters()) == \
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
    policy = TextToImagePolicy(clip, gallery, tok, train_logit_scale=train_logit_scale)
    trainable = set(policy.trainable_parameters())
    assert not any(n.startswith("clip.visual.") for n in trainable)
    assert {"clip.token_embedding.weight", "clip.positional_embedding", "clip.ln_final.weight",
            "clip.text_projection"} <= trainable
    assert ("clip.logit_scale" in trainable) == train_logit_scale
    method = rlcf.create_method("rlcf", policy, reward, steps=2, lr=1e-2, k=4, selection=1.0)
    text = "a red circle"
    changed = adapted_state(method, text)               # the query is the caption itself
    assert changed and not any(n.startswith("clip.visual.") for n in changed)
    assert "clip.token_embedding.weight" in changed and "clip.transformer.resblocks.0.attn.in_proj_weight" in changed
    assert ("clip.logit_scale" in changed) == train_logit_scale
    with torch.no_grad():
        out = method(text)
    assert out.shape == (14,) and torch.isfinite(out).all()
    with torch.no_grad():   # the same caption as token ids of the policy's tokenizer gives the same scores
        assert torch.allclose(policy.logits(policy.encode_query(tok([text]))),
                              policy.logits(policy.encode_query([text])))


def test_text_query_is_read_by_the_reward_with_its_own_tokenizer_once_per_query():
    """t2i: the reward CLIP reads the caption string with its own tokenizer (the policy's may differ), and
    encodes each query once however many steps score it."""
    rclip, _, rtok = make_clip("RLCF-Tiny-Reward", 1)
    reward = rlcf.CLIPReward(rclip, rtok)
    reward.set_candidates(torch.randn(5, 3, 48, 48))
    calls = reward.encode_calls
    r1 = reward(["a cat"], torch.tensor([[0, 1]]))
    r2 = reward(["a cat"], torch.tensor([[1, 2]]))
    assert reward.encode_calls == calls + 1
    expected = 2.5 * (reward.encode_texts(["a cat"]) @ reward.candidate_feats[[0, 1]].t()).clamp(min=0)
    assert torch.allclose(r1, expected, atol=1e-6) and torch.allclose(r1[0, 1], r2[0, 0])
    reward(["a dog"], torch.tensor([[0, 1]]))                # another query: encoded again
    assert reward.encode_calls == calls + 3
