"""VLRM's sim: the BLIP-2 ITM reward through transformers on a tiny random Blip2ForImageTextRetrieval built here
(checked against the ITM head computed module by module), its place behind the recipe's similarity interface, the
CLIP variant through rlcf.clip_score, the clip_weight calibration, VLRM-RS's own Phi CLIP, and paper-scale
micro-batching (accumulated gradients equal the full batch's)."""
from __future__ import annotations

import math

import pytest
import torch

import rlcf
from tasks.caption_rl.vlrm.calibrate import (
    PAPER_TABLES_ITM,
    calibrated_clip_weight,
    measure_cos_spread,
    paper_itm_spread,
    within_image_spread,
)
from tasks.caption_rl.data import RLData
from tasks.caption_rl.decoding import DecodingConfig
from tasks.caption_rl.rollout import generate_rollout, rollout_from_tokens
from tasks.caption_rl.vlrm.similarity import CLIPSimilarity, ITMSimilarity
from tasks.caption_rl.vlrm.recipe import VLRMConfig, VLRMRecipe
from tasks.captioning.checkpoint import build_word_tokenizer, tiny_captioner

CAPTIONS = ["a red circle on a blue background", "a green square", "two yellow stars in the picture",
            "a photo of a small blue triangle", "an image of a red square", "three green circles"]


@pytest.fixture(autouse=True)
def _one_thread():
    torch.set_num_threads(1)


def tiny_blip2_itm(vocab: int, seed: int = 0):
    """A random BLIP-2 retrieval model (ViT 1 layer on 32 px, Q-Former 1 layer, 4 queries): no download."""
    from transformers import Blip2Config, Blip2ForImageTextRetrieval

    torch.manual_seed(seed)
    cfg = Blip2Config(vision_config=dict(hidden_size=32, intermediate_size=64, num_hidden_layers=1,
                                         num_attention_heads=2, image_size=32, patch_size=8),
                      qformer_config=dict(hidden_size=32, num_hidden_layers=1, num_attention_heads=2,
                                          intermediate_size=64, vocab_size=vocab, encoder_hidden_size=32,
                                          max_position_embeddings=64, use_qformer_text_input=True),
                      num_query_tokens=4, image_text_hidden_size=16)
    return Blip2ForImageTextRetrieval(cfg).eval()


@pytest.fixture
def itm():
    tok = build_word_tokenizer(CAPTIONS)
    return tiny_blip2_itm(len(tok.get_vocab())), tok


@torch.no_grad()
def _itm_by_hand(model, pixels, input_ids, attention_mask):
    """BLIP-2 ITM (LAVIS ``compute_itm``): queries + text through the Q-Former cross-attending to the image, the
    two-class head on each query output, logits averaged over the queries, class 1 = match."""
    img = model.vision_model(pixel_values=pixels).last_hidden_state
    q = model.query_tokens.expand(img.shape[0], -1, -1)
    att = torch.cat([torch.ones(q.shape[:2], dtype=torch.long), attention_mask], 1)
    emb = model.embeddings(input_ids=input_ids, query_embeds=q)
    out = model.qformer(query_embeds=emb, query_length=q.shape[1], attention_mask=att, encoder_hidden_states=img,
                        encoder_attention_mask=torch.ones(img.shape[:2], dtype=torch.long)).last_hidden_state
    logits = model.itm_head(out[:, :q.shape[1]])           # [B, Q, 2]
    return logits.mean(1)[:, 1]


def test_itm_similarity_is_the_positive_itm_logit(itm):
    model, tok = itm
    pixels = torch.randn(5, 3, 32, 32, generator=torch.Generator().manual_seed(1))
    texts = ["a red circle", "two yellow stars in the picture", "a green square", "a", "three green circles"]
    sim = ITMSimilarity(model, tok, weight=2.0, batch_size=2)       # chunks of 2: padding differs per chunk
    enc = tok(texts, padding=True, truncation=True, max_length=64, return_tensors="pt")
    want = _itm_by_hand(model, pixels, enc["input_ids"], enc["attention_mask"])
    torch.testing.assert_close(sim.scores(pixels, texts), 2.0 * want, atol=1e-5, rtol=1e-5)
    assert sim.needs_pixels and not any(p.requires_grad for p in model.parameters())
    with pytest.raises(ValueError, match="one text per image"):
        sim.scores(pixels, texts[:2])


def _data(n: int = 4, pixels: bool = False, phi: bool = False) -> RLData:
    g = torch.Generator().manual_seed(2)
    rf = torch.nn.functional.normalize(torch.randn(n, 48, generator=g), dim=-1)
    extra = {"phi": torch.nn.functional.normalize(torch.randn(n, 48, generator=g), dim=-1)} if phi else {}
    return RLData(torch.randn(n, 16, generator=g), rf, [[c] for c in CAPTIONS[:n]],
                  pixels=torch.randn(n, 3, 32, 32, generator=g) if pixels else None, extra_feats=extra)


def test_vlrm_with_the_itm_reward(itm, reward_clip):
    model, tok = itm
    cap = tiny_captioner(CAPTIONS, prefix_dim=16, hidden=32, heads=2, seed=0, max_new_tokens=6)
    sim = ITMSimilarity(model, tok)
    recipe = VLRMRecipe(cap, None, VLRMConfig(sim="itm", value_width=16), similarity=sim)
    batch = _data(pixels=True).batch(torch.arange(4), need_captions=False)
    torch.manual_seed(0)
    rollout = generate_rollout(cap, batch.prefix_feats, recipe.cfg.rollout_decoding)
    ret, parts = recipe.returns(batch, rollout)
    want = sim.scores(batch.pixels, rollout.texts)
    assert parts["sim_itm"] == pytest.approx(float(want.mean()), abs=1e-6) and parts["sim"] == parts["sim_itm"]
    ref = recipe.reference(batch.prefix_feats, rollout)
    last = rollout.token_mask.sum(-1) - 1                             # the last token's return: sim + ref - noeos
    noeos = (~rollout.ended).float()
    torch.testing.assert_close(ret[torch.arange(4), last], want + ref - noeos, atol=1e-5, rtol=1e-5)
    with pytest.raises(ValueError, match="vlrm.sim='itm' needs an ITM similarity"):
        VLRMRecipe(cap, None, VLRMConfig(sim="itm"))
    with pytest.raises(ValueError, match="pixels"):
        sim(_data().batch(torch.arange(2), need_captions=False), ["a", "b"])
    with pytest.raises(ValueError, match="vlrm.sim must be one of"):
        VLRMConfig(sim="blip")


def test_clip_similarity_is_rlcf_clip_score(reward_clip):
    model, _, tok = reward_clip
    reward = rlcf.CLIPReward(model, tok)
    batch = _data().batch(torch.arange(4), need_captions=False)
    texts = ["a red circle", "a green square", "two stars", "a blue triangle"]
    want = rlcf.clip_score(batch.reward_feats, reward.encode_texts(texts), 7.0)
    torch.testing.assert_close(CLIPSimilarity(reward, 7.0)(batch, texts), want)
    cos = (batch.reward_feats * reward.encode_texts(texts)).sum(-1)
    torch.testing.assert_close(want, 7.0 * cos.clamp(min=0))


def test_calibration_target_and_weight():
    rows = [[float(x) for x in r] for r in PAPER_TABLES_ITM]
    by_hand = sum(math.sqrt(sum((x - sum(r) / 3) ** 2 for x in r) / 2) for r in rows) / len(rows)
    assert paper_itm_spread() == pytest.approx(by_hand, rel=1e-6) and paper_itm_spread() == pytest.approx(1.3837, 1e-3)
    assert within_image_spread(torch.tensor([[0.0, 2.0], [1.0, 1.0]])) == pytest.approx(math.sqrt(2) / 2)
    assert calibrated_clip_weight(0.25, target=1.5) == pytest.approx(6.0)
    with pytest.raises(ValueError, match="cos_spread"):
        calibrated_clip_weight(0.0)
    with pytest.raises(ValueError, match="captions >= 2"):
        within_image_spread(torch.zeros(3, 1))


def test_measured_spread_is_zero_for_identical_captions(reward_clip):
    model, _, tok = reward_clip
    cap = tiny_captioner(CAPTIONS, prefix_dim=16, hidden=32, heads=2, seed=0, max_new_tokens=6)
    d = _data()
    greedy = DecodingConfig(mode="greedy")
    assert measure_cos_spread(cap, rlcf.CLIPReward(model, tok), d.prefix_feats, d.reward_feats, 3, greedy) == 0.0
    sampled = measure_cos_spread(cap, rlcf.CLIPReward(model, tok), d.prefix_feats, d.reward_feats, 3)
    assert sampled > 0


def test_rs_phi_uses_its_own_clip(reward_clip, tiny_clip):
    from tasks.caption_rl.contrastive import normalized_contrastive_term

    rmodel, _, rtok = reward_clip
    pmodel, _, ptok = tiny_clip
    cap = tiny_captioner(CAPTIONS, prefix_dim=16, hidden=32, heads=2, seed=0, max_new_tokens=6)
    phi = rlcf.CLIPReward(pmodel, ptok)
    data = _data(phi=True)
    data.extra_feats["phi"] = torch.nn.functional.normalize(torch.randn(4, 32), dim=-1)   # tiny_clip's width
    recipe = VLRMRecipe(cap, rlcf.CLIPReward(rmodel, rtok), VLRMConfig(retrieval=True, value_width=16), phi=phi)
    batch = data.batch(torch.arange(4), need_captions=False)
    texts = ["a red circle", "a green square", "two stars", "a blue triangle"]
    sim, parts = recipe.similarity_reward(batch, texts)
    base = CLIPSimilarity(recipe.reward, 10.0)(batch, texts)
    want_phi = normalized_contrastive_term(batch.extra_feats["phi"], phi.encode_texts(texts))
    torch.testing.assert_close(sim, base + 0.3 * want_phi, atol=1e-5, rtol=1e-5)


def test_micro_batches_accumulate_the_full_batch_gradient(reward_clip):
    model, _, tok = reward_clip
    cap = tiny_captioner(CAPTIONS, prefix_dim=16, hidden=32, heads=2, seed=0, max_new_tokens=6)
    recipe = VLRMRecipe(cap, rlcf.CLIPReward(model, tok), VLRMConfig(value_width=16, retrieval=True))
    batch = _data(6).batch(torch.arange(6), need_captions=False)
    torch.manual_seed(0)
    full = generate_rollout(cap, batch.prefix_feats, recipe.cfg.rollout_decoding)
    sim, parts = recipe.similarity_reward(batch, full.texts)

    def grads(sizes):
        chunks, rolls, rets, s = [], [], [], 0
        for n in sizes:
            ch = batch.subset(slice(s, s + n))
            r = rollout_from_tokens(cap, full.tokens[s:s + n])
            chunks.append(ch)
            rolls.append(r)
            rets.append(recipe.returns(ch, r, sim[s:s + n], parts))
            s += n
        params = [p for p in cap.mapper.parameters()] + list(recipe.value_head.parameters())
        total = [torch.zeros_like(p) for p in params]
        for res in recipe.chunk_losses(chunks, rolls, rets):
            loss = res.losses[0][0] + res.losses[1][0]
            for t, g in zip(total, torch.autograd.grad(loss, params, allow_unused=True)):
                if g is not None:
                    t += g
        return total

    for a, b in zip(grads([6]), grads([2, 3, 1])):
        torch.testing.assert_close(a, b, atol=1e-5, rtol=1e-4)
