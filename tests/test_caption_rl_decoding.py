"""Decoding presets of the RL recipes: the papers' values, preset + override resolution, and the generation they
drive (through PrefixCaptioner.generate): exact tokens, n-gram blocking checked against greedy decoding written out
by hand, minimum length, bad words, the same decoding in rollouts and evaluation."""
from __future__ import annotations

import pytest
import torch

from tasks.caption_rl.decoding import DECODING_PRESETS, DecodingConfig, bad_words_ids, resolve_decoding
from tasks.caption_rl.evaluate import generate_captions
from tasks.caption_rl.rollout import generate_rollout
from tasks.captioning.checkpoint import tiny_captioner

CAPTIONS = ["a red circle on a blue background", "a green square", "two yellow stars in the picture",
            "a photo of a small blue triangle", "an image of a red square", "three green circles"]


@pytest.fixture(autouse=True)
def _one_thread():
    torch.set_num_threads(1)


@pytest.fixture
def cap():
    return tiny_captioner(CAPTIONS, prefix_dim=16, hidden=32, heads=2, seed=0, max_new_tokens=12).eval()


def test_presets_hold_the_papers_values():
    p = DECODING_PRESETS
    # VLRM Table 2 (inference) and section 3.6 (training sampling)
    assert (p["vlrm_eval"].mode, p["vlrm_eval"].num_beams, p["vlrm_eval"].no_repeat_ngram_size,
            p["vlrm_eval"].min_new_tokens, p["vlrm_eval"].max_new_tokens) == ("beam", 5, 2, 4, 60)
    assert (p["vlrm_rollout"].mode, p["vlrm_rollout"].top_k, p["vlrm_rollout"].temperature,
            p["vlrm_rollout"].top_p) == ("sample", 6, 2.0, 1.0)
    # WTF-RL: policy beams (no repeated 3-grams, 50 new tokens), greedy baseline without n-gram blocking, evaluation
    assert (p["chaffin_policy"].mode, p["chaffin_policy"].num_beams, p["chaffin_policy"].no_repeat_ngram_size,
            p["chaffin_policy"].max_new_tokens) == ("beam", 5, 3, 50)
    assert (p["chaffin_baseline"].mode, p["chaffin_baseline"].no_repeat_ngram_size) == ("greedy", 0)
    assert (p["chaffin_eval"].num_beams, p["chaffin_eval"].no_repeat_ngram_size) == (5, 3)


def test_resolve_preset_with_overrides_and_clear_errors():
    d = resolve_decoding({"preset": "vlrm_eval", "max_new_tokens": 30, "num_beams": None})
    assert (d.num_beams, d.no_repeat_ngram_size, d.min_new_tokens, d.max_new_tokens) == (5, 2, 4, 30)
    assert resolve_decoding(None) == DECODING_PRESETS["captioner"]
    assert resolve_decoding("chaffin_eval") == DECODING_PRESETS["chaffin_eval"]
    with pytest.raises(KeyError, match="gt.decoding.policy.preset 'beam5' unknown"):
        resolve_decoding({"preset": "beam5"}, name="gt.decoding.policy")
    with pytest.raises(KeyError, match="unknown keys \\['beams'\\]"):
        resolve_decoding({"beams": 3})
    with pytest.raises(ValueError, match="eval.decoding: decoding no_repeat_ngram_size"):
        resolve_decoding({"no_repeat_ngram_size": -1}, name="eval.decoding")
    with pytest.raises(ValueError, match="min_new_tokens"):
        DecodingConfig(min_new_tokens=10, max_new_tokens=5)
    with pytest.raises(ValueError, match="mode"):
        DecodingConfig(mode="nucleus")


def _bigrams(tokens):
    return [tuple(tokens[i:i + 2]) for i in range(len(tokens) - 1)]


@torch.no_grad()
def _greedy_blocked_by_hand(cap, emb, n, max_new, min_new=1):
    """Greedy decoding with transformers' n-gram rule written out: a token is banned when the last ``n - 1``
    generated tokens followed by it form an n-gram already generated; STOP banned before ``min_new`` tokens."""
    prefix = cap.prefix(emb)
    toks = []
    for step in range(max_new):
        ids = torch.tensor([[cap.bos_id] + toks])
        logits = cap.lm(inputs_embeds=torch.cat([prefix, cap.lm.get_input_embeddings()(ids)], 1)).logits[0, -1]
        if step < min_new:
            logits[cap.stop_id] = float("-inf")
        if n and len(toks) >= n - 1:
            ctx = tuple(toks[len(toks) - n + 1:]) if n > 1 else ()
            for i in range(len(toks) - n + 1):
                if tuple(toks[i:i + n - 1]) == ctx:
                    logits[toks[i + n - 1]] = float("-inf")
        nxt = int(logits.argmax())
        toks.append(nxt)
        if nxt == cap.stop_id:
            break
    return toks


def test_ngram_blocking_in_rollouts_matches_the_rule_by_hand(cap):
    emb = torch.randn(6, 16, generator=torch.Generator().manual_seed(3))
    plain = generate_rollout(cap, emb, DecodingConfig(mode="greedy", max_new_tokens=12))
    blocked = generate_rollout(cap, emb, DecodingConfig(mode="greedy", no_repeat_ngram_size=2, max_new_tokens=12))
    assert any(len(set(_bigrams(t))) < len(_bigrams(t)) for t in plain.tokens)     # the random LM repeats itself
    for i, toks in enumerate(blocked.tokens):
        assert len(set(_bigrams(toks))) == len(_bigrams(toks))                        # never once blocked
        assert toks == _greedy_blocked_by_hand(cap, emb[i:i + 1], 2, 12)
        assert plain.tokens[i] == _greedy_blocked_by_hand(cap, emb[i:i + 1], 0, 12)
    # the rollout's ids are exactly [BOS] + the generated tokens, and its texts their decoding
    assert blocked.ids[0, :len(blocked.tokens[0]) + 1].tolist() == [cap.bos_id] + blocked.tokens[0]
    assert blocked.texts == cap.decode_tokens(blocked.tokens)
    assert blocked.ended.tolist() == [t[-1] == cap.stop_id for t in blocked.tokens]


def test_min_new_tokens_and_bad_words(cap):
    emb = torch.randn(5, 16, generator=torch.Generator().manual_seed(4))
    r = generate_rollout(cap, emb, DecodingConfig(mode="beam", num_beams=3, min_new_tokens=4, max_new_tokens=8))
    assert all(len([t for t in toks if t != cap.stop_id]) >= 4 for toks in r.tokens)
    free = generate_rollout(cap, emb, DecodingConfig(mode="greedy", max_new_tokens=8))
    word = cap.tokenizer.convert_ids_to_tokens(free.tokens[0][0])                    # the first word said
    ids = bad_words_ids(cap.tokenizer, [word])
    assert ids == [[free.tokens[0][0]]]                                              # word-level: no space variant
    banned = generate_rollout(cap, emb, DecodingConfig(mode="greedy", max_new_tokens=8, bad_words=(word,)))
    assert all(free.tokens[0][0] not in toks for toks in banned.tokens)


def test_sampling_options_reach_generate(cap):
    emb = torch.randn(4, 16, generator=torch.Generator().manual_seed(5))
    torch.manual_seed(0)
    a = generate_rollout(cap, emb, DECODING_PRESETS["vlrm_rollout"])
    torch.manual_seed(0)
    b = cap.generate(emb, do_sample=True, top_k=6, top_p=1.0, temperature=2.0, return_tokens=True)
    assert a.tokens == [row[0] for row in b[1]] and a.texts == [row[0] for row in b[0]]
    # top-k 1 sampling is greedy, whatever the temperature
    one = generate_rollout(cap, emb, DecodingConfig(mode="sample", top_k=1, temperature=2.0))
    assert one.tokens == generate_rollout(cap, emb, "greedy").tokens


def test_evaluation_uses_the_configured_decoding(cap):
    emb = torch.randn(7, 16, generator=torch.Generator().manual_seed(6))
    dec = resolve_decoding({"preset": "vlrm_eval", "max_new_tokens": 10})
    caps = generate_captions(cap, emb, dec, batch_size=3)
    want = [t.lower() for t in generate_rollout(cap, emb, dec).texts]
    assert caps == want
    assert generate_captions(cap, emb, 1) == [t.lower() for t in generate_rollout(cap, emb, "greedy").texts]
