"""Prefix captioner: mapper shapes, token layout and masks, pad-free sequence log-probs, decoding,
official-checkpoint conversion and save/load (tiny random models, CPU)."""
from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from tasks.captioning.checkpoint import captioner_state, convert_official_mapper, load_captioner, save_atomic, \
    tiny_captioner
from tasks.captioning.model import CaptionerConfig, MLPMapper, TransformerMapper, noise_injection

CAPTIONS = ["a photo of a red circle.", "a blue square on a green background.", "two stars in the picture.",
            "a small yellow triangle."]


@pytest.fixture(autouse=True)
def _one_thread():
    torch.set_num_threads(1)   # tiny ops: 2 threads on a shared 2-core machine are far slower


@pytest.fixture
def captioner():
    return tiny_captioner(CAPTIONS, prefix_dim=16, hidden=32, heads=2, seed=0).eval()


def test_mapper_shapes():
    m = TransformerMapper(16, 32, prefix_length=5, clip_length=3, num_layers=2, num_heads=4)
    assert m(torch.randn(7, 16)).shape == (7, 5, 32)
    assert MLPMapper(16, 32, prefix_length=5)(torch.randn(7, 16)).shape == (7, 5, 32)
    layer = m.transformer.layers[0]
    assert layer.norm_first and layer.linear1.out_features == 64 and layer.dropout.p == 0.0


def test_caption_token_layout_and_masks(captioner):
    ids, mask = captioner.encode_captions(["a red circle", "two stars in the picture ."])
    bos, stop, pad = captioner.bos_id, captioner.stop_id, captioner.pad_id
    n0 = len(captioner.tokenizer("a red circle", add_special_tokens=False).input_ids)
    assert ids[0, 0] == bos and ids[1, 0] == bos
    assert ids[0, n0 + 1] == stop and (ids[0, n0 + 2:] == pad).all()
    assert mask[0].tolist() == [1] * (n0 + 2) + [0] * (ids.shape[1] - n0 - 2)
    assert mask[1].all() and ids[1, -1] == stop


def _hand_mean_logprob(cap, emb, text):
    """One caption alone (no padding anywhere): mean log p(w_1 .. STOP | prefix, BOS)."""
    toks = [cap.bos_id] + cap.tokenizer(text, add_special_tokens=False).input_ids + [cap.stop_id]
    ids = torch.tensor([toks])
    prefix = cap.mapper(F.normalize(emb, dim=-1))
    x = torch.cat([prefix, cap.lm.get_input_embeddings()(ids)], dim=1)
    logits = cap.lm(inputs_embeds=x).logits[0]
    p = prefix.shape[1]
    lp = [torch.log_softmax(logits[p + t - 1], -1)[toks[t]] for t in range(1, len(toks))]
    return torch.stack(lp).mean()


def test_sequence_logprob_excludes_pads(captioner):
    from tasks.captioning.policy import CaptionPolicy

    emb = torch.randn(1, 16)
    texts = [["a red circle", "two stars in the picture on a blue background", "a square"]]
    policy = CaptionPolicy(captioner, torch.nn.Linear(1, 1))
    got = policy.sequence_logprob(emb, texts)
    assert got.shape == (1, 3)
    want = torch.stack([_hand_mean_logprob(captioner, emb, t) for t in texts[0]])
    torch.testing.assert_close(got[0], want, atol=1e-5, rtol=1e-5)
    # the official mean over every position (pads included) differs for the short captions
    ids, mask = captioner.encode_captions(texts[0])
    full = torch.log_softmax(captioner.logits(captioner.prefix(emb.repeat(3, 1)), ids, mask), -1)
    with_pads = full.gather(-1, ids[:, 1:, None]).squeeze(-1).mean(-1)
    assert not torch.allclose(with_pads[0], want[0], atol=1e-4)


def test_gradient_reaches_only_the_mapper(captioner):
    captioner.lm.requires_grad_(False)
    loss = -captioner.mean_logprob(torch.randn(2, 16), ["a red circle", "two stars"]).mean()
    loss.backward()
    assert all(p.grad is not None for p in captioner.mapper.parameters())
    assert all(p.grad is None for p in captioner.lm.parameters())


def test_generate_beam_and_sample(captioner):
    out = captioner.generate(torch.randn(2, 16), num_return_sequences=3)
    assert len(out) == 2 and all(len(r) == 3 for r in out) and all(isinstance(t, str) for r in out for t in r)
    again = captioner.generate(torch.randn(2, 16).zero_() + 0.5, num_return_sequences=3)
    assert again == captioner.generate(torch.randn(2, 16).zero_() + 0.5, num_return_sequences=3)
    torch.manual_seed(1)
    s = captioner.generate(torch.randn(1, 16), num_return_sequences=4, do_sample=True)
    assert len(s[0]) == 4
    assert all("</s>" not in t and "<pad>" not in t for r in out + s for t in r)


def test_stop_token_is_one_token(captioner):
    cfg = CaptionerConfig(prefix_dim=16, prefix_length=4, clip_length=4, num_layers=1, num_heads=2,
                          stop_token="two stars")
    with pytest.raises(ValueError, match="stop token"):
        type(captioner)(cfg, captioner.lm, captioner.tokenizer)


def test_noise_injection_is_normalised():
    x = torch.randn(5, 8) * 3
    y = noise_injection(x, 0.016, torch.Generator().manual_seed(123))
    torch.testing.assert_close(y.norm(dim=-1), torch.ones(5))
    assert (y - F.normalize(x, dim=-1)).abs().max() > 0.01
    torch.testing.assert_close(noise_injection(x, 0.0), F.normalize(x, dim=-1))


def _official_forward(sd, x, clip_length, heads):
    """The official ClipCap/RLCF TransformerMapper, written out from its description (bias-free q / kv)."""
    dim = sd["clip_project.prefix_const"].shape[1]
    h = F.linear(x, sd["clip_project.linear.weight"], sd["clip_project.linear.bias"]).view(x.shape[0], clip_length, dim)
    h = torch.cat([h, sd["clip_project.prefix_const"].expand(x.shape[0], -1, -1)], 1)
    i = 0
    while f"clip_project.transformer.layers.{i}.norm1.weight" in sd:
        def g(name, i=i):
            return sd[f"clip_project.transformer.layers.{i}.{name}"]
        y = F.layer_norm(h, (dim,), g("norm1.weight"), g("norm1.bias"))
        b, n, _ = y.shape
        q = (y @ g("attn.to_queries.weight").T).view(b, n, heads, dim // heads)
        kv = (y @ g("attn.to_keys_values.weight").T).view(b, n, 2, heads, dim // heads)
        att = torch.einsum("bnhd,bmhd->bnmh", q, kv[:, :, 0]) * (dim // heads) ** -0.5
        o = torch.einsum("bnmh,bmhd->bnhd", att.softmax(2), kv[:, :, 1]).reshape(b, n, dim)
        h = h + F.linear(o, g("attn.project.weight"), g("attn.project.bias"))
        y = F.layer_norm(h, (dim,), g("norm2.weight"), g("norm2.bias"))
        h = h + F.linear(F.relu(F.linear(y, g("mlp.fc1.weight"), g("mlp.fc1.bias"))), g("mlp.fc2.weight"),
                         g("mlp.fc2.bias"))
        i += 1
    return h[:, clip_length:]


def _official_state(d, dim, p, c, heads):
    sd = {"clip_project.linear.weight": torch.randn(c * dim, d), "clip_project.linear.bias": torch.randn(c * dim),
          "clip_project.prefix_const": torch.randn(p, dim), "llm.llm.model.decoder.x": torch.zeros(1)}
    for i in range(2):
        pre = f"clip_project.transformer.layers.{i}."
        for n, shape in (("norm1", (dim,)), ("norm2", (dim,))):
            sd[pre + n + ".weight"], sd[pre + n + ".bias"] = 1 + 0.1 * torch.randn(shape), 0.1 * torch.randn(shape)
        sd[pre + "attn.to_queries.weight"] = torch.randn(dim, dim) / 4
        sd[pre + "attn.to_keys_values.weight"] = torch.randn(2 * dim, dim) / 4
        sd[pre + "attn.project.weight"], sd[pre + "attn.project.bias"] = torch.randn(dim, dim) / 4, torch.randn(dim)
        sd[pre + "mlp.fc1.weight"], sd[pre + "mlp.fc1.bias"] = torch.randn(2 * dim, dim) / 4, torch.randn(2 * dim)
        sd[pre + "mlp.fc2.weight"], sd[pre + "mlp.fc2.bias"] = torch.randn(dim, 2 * dim) / 4, torch.randn(dim)
    return sd


def test_official_mapper_conversion():
    torch.manual_seed(0)
    d, dim, p, c, heads = 12, 16, 3, 2, 4
    sd = _official_state(d, dim, p, c, heads)
    state, fields = convert_official_mapper(sd, num_heads=heads)
    assert fields == {"mapping_type": "transformer", "prefix_dim": d, "prefix_length": p, "clip_length": c,
                      "num_layers": 2, "num_heads": heads, "mlp_ratio": 2.0}
    m = TransformerMapper(d, dim, p, c, num_layers=2, num_heads=heads).eval()
    m.load_state_dict(state)
    x = torch.randn(3, d)
    torch.testing.assert_close(m(x), _official_forward(sd, x, c, heads), atol=1e-4, rtol=1e-4)


def test_save_and_load_embedded_captioner(tmp_path, captioner):
    path = tmp_path / "ckpt.pt"
    save_atomic({"model": captioner_state(captioner)}, path)
    loaded = load_captioner(path)
    emb = torch.randn(2, 16)
    assert loaded.generate(emb, 2) == captioner.generate(emb, 2)
    assert not any(p.requires_grad for p in loaded.lm.parameters())
    assert [f.name for f in tmp_path.iterdir()] == ["ckpt.pt"]   # no temporary file left behind


def test_missing_checkpoint_and_lm_name_the_path(tmp_path):
    from tasks.captioning.checkpoint import load_pretrained_lm
    from tasks.common.data import MissingDataError

    with pytest.raises(MissingDataError, match="nowhere.pt"):
        load_captioner(tmp_path / "nowhere.pt")
    with pytest.raises(MissingDataError, match="opt-125m.*hf download facebook/opt-125m"):
        load_pretrained_lm(tmp_path / "opt-125m")


def test_load_official_checkpoint_with_local_lm_folder(tmp_path, captioner):
    """An official ``{"state_dict": ...}`` file + a local LM folder (``save_pretrained`` layout, as
    ``pretrained/opt-125m``) load into a working captioner whose mapper is the official one."""
    torch.manual_seed(1)
    captioner.lm.save_pretrained(tmp_path / "lm")
    captioner.tokenizer.save_pretrained(tmp_path / "lm")
    sd = _official_state(12, 32, 3, 2, 8)
    torch.save({"state_dict": sd, "epoch": 9}, tmp_path / "ckpt-latest.pt")
    cap = load_captioner(tmp_path / "ckpt-latest.pt", lm_path=tmp_path / "lm", config=CaptionerConfig(stop_token=None))
    assert (cap.config.prefix_dim, cap.config.prefix_length, cap.config.clip_length, cap.config.num_layers) == \
        (12, 3, 2, 2)
    x = torch.randn(2, 12)
    torch.testing.assert_close(cap.prefix(x), _official_forward(sd, F.normalize(x, dim=-1), 2, 8),
                               atol=1e-4, rtol=1e-4)
    assert len(cap.generate(x, 2)[1]) == 2


def test_newline_stop_token_with_byte_level_bpe():
    """OPT-style set-up: a byte-level BPE tokenizer (as GPT-2/OPT) and the official stop token "\\n"."""
    from tokenizers import ByteLevelBPETokenizer
    from transformers import PreTrainedTokenizerFast

    from tasks.captioning.checkpoint import tiny_opt
    from tasks.captioning.model import PrefixCaptioner

    bpe = ByteLevelBPETokenizer()
    bpe.train_from_iterator([c + "\n" for c in CAPTIONS] * 5, vocab_size=300, min_frequency=1,
                            special_tokens=["<s>", "<pad>", "</s>", "<unk>"], show_progress=False)
    tok = PreTrainedTokenizerFast(tokenizer_object=bpe._tokenizer, bos_token="</s>", eos_token="</s>",
                                  pad_token="<pad>", unk_token="<unk>")
    cfg = CaptionerConfig(prefix_dim=16, prefix_length=4, clip_length=4, num_layers=1, num_heads=2,
                          max_new_tokens=8)   # stop_token "\n" by default
    cap = PrefixCaptioner(cfg, tiny_opt(len(tok), hidden=32, heads=2, seed=0), tok)
    newline = tok("\n", add_special_tokens=False).input_ids
    assert newline == [cap.stop_id] and cap.stop_id != tok.eos_token_id
    ids, mask = cap.encode_captions(["a red circle."])
    assert ids[0, 0] == tok.bos_token_id and ids[0, int(mask[0].sum()) - 1] == cap.stop_id
    out = cap.generate(torch.randn(2, 16), num_return_sequences=2)
    assert all("\n" not in t and t == t.strip() for r in out for t in r)
