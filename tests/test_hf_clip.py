"""HF transformers CLIP / SigLIP behind open_clip's contract (:mod:`tasks.common.hf_clip`).

Tiny random-weight HF models are built here, saved with ``save_pretrained`` (model, image processor and a CLIP
BPE tokenizer made from open_clip's vocabulary) and loaded back through :func:`load_hf_clip` (transformers'
``from_pretrained``, offline). Checked: the tokenizer's ids against open_clip's, the preprocessing against the
HF image processor, features against the HF models' own ``get_*_features``, the text tower from input embeddings
against ``encode_text``, vmapped ``functional_call``, an open_clip CLIP converted to HF against the original,
and the toolkit's policies (encoder / prompt tuning, batched episodes) over the wrapper.
"""
from __future__ import annotations

import copy
import json
import pickle

import numpy as np
import open_clip
import pytest
import torch
from PIL import Image

import rlcf
from conftest import CLASSNAMES, FIXTURES, SIGLIP_CONTEXT, make_clip, save_tiny_hf
from conftest import tiny_hf_config as _tiny_config
from rlcf.policy import vmap_friendly
from tasks.classification.policies import EncoderPolicy, PromptPolicy, class_prompts
from tasks.common.data import MissingDataError, UserError
from tasks.common.hf_clip import HFCLIP, HFTokenizer, hf_clip_tokenizer_from_open_clip, load_hf_clip, open_clip_to_hf
from tasks.common.text import encode_texts, text_tower

transformers = pytest.importorskip("transformers")

SENTENCES = ["a photo of a cat.", "A Tree_Frog, jumping!! (twice)", "  golden   retriever ", "it's 2024: don't stop",
             "house_finch on a car; 3 dogs?"]


@pytest.fixture(scope="module")
def folders(tmp_path_factory):
    """``{kind: folder}`` of saved tiny HF models (policy seed 0) and ``{kind}-reward`` (seed 1)."""
    out = {}
    for kind in ("clip", "siglip"):
        for name, seed in ((kind, 0), (f"{kind}-reward", 1)):
            out[name] = save_tiny_hf(tmp_path_factory.mktemp(name), kind, seed)
    return out


def _hf_reference(folder, kind: str):
    cls = transformers.CLIPModel if kind == "clip" else transformers.SiglipModel
    return cls.from_pretrained(folder, local_files_only=True).eval()


def test_tokenizer_from_open_clip_gives_open_clips_ids(tmp_path):
    tok = HFTokenizer(hf_clip_tokenizer_from_open_clip(tmp_path), 77)
    ours, ref = tok(SENTENCES), open_clip.tokenize(SENTENCES)
    assert ours.shape == ref.shape == (len(SENTENCES), 77) and ours.dtype == torch.long
    for a, b in zip(ours, ref, strict=True):
        n = int((b == 49407).nonzero()[0]) + 1          # up to and including the end-of-text token
        assert torch.equal(a[:n], b[:n]) and (a[n:] == 49407).all() and (b[n:] == 0).all()
    assert int(ours[1][3]) == int(ref[1][3]) == 318  # "tree_frog": "_" is its own token in both
    long = ["many words " * 60]                          # truncated: EOT at the last position, as open_clip
    assert torch.equal(tok(long), open_clip.tokenize(long))
    reloaded = transformers.AutoTokenizer.from_pretrained(tmp_path, local_files_only=True)
    assert torch.equal(HFTokenizer(reloaded, 77)(SENTENCES), ours)
    assert tok("one string").shape == (1, 77) and tok(["x"], context_length=16).shape == (1, 16)


@pytest.mark.parametrize("kind", ["clip", "siglip"])
def test_loaded_model_matches_hf_and_names_its_parameters(folders, kind):
    model, _, tok = load_hf_clip(folders[kind])
    ref = _hf_reference(folders[kind], kind)
    assert isinstance(model, HFCLIP) and not model.training and model.model_type == kind
    names = [n for n, _ in model.named_parameters()]
    assert len(names) == len(list(ref.parameters()))           # every HF parameter, once
    vision = {n for n in names if n.startswith("visual.")}
    assert vision == {f"visual.{n}" for n, _ in model.visual.named_parameters()}
    assert {n.split(".")[1] for n in vision} == ({"vision_model", "visual_projection"} if kind == "clip"
                                                  else {"vision_model"})
    rest = set(names) - vision
    assert all(n.startswith(("text_model.", "text_projection.", "logit_")) for n in rest)
    assert isinstance(model.logit_scale, torch.nn.Parameter) and torch.equal(model.logit_scale, ref.logit_scale)
    assert ("logit_bias" in rest) == (kind == "siglip") and "logit_scale" in rest
    v = model.visual
    assert v.image_size == 32 and v.output_dim == 32
    mean = (0.48145466, 0.4578275, 0.40821073) if kind == "clip" else (0.5, 0.5, 0.5)
    assert v.image_mean == pytest.approx(mean) and isinstance(v.image_std, tuple)
    tokens = tok(SENTENCES)
    assert tokens.shape == (5, 77 if kind == "clip" else SIGLIP_CONTEXT)
    x = torch.randn(3, 3, 32, 32)
    with torch.no_grad():
        assert torch.allclose(model.encode_image(x), ref.get_image_features(pixel_values=x).pooler_output, atol=1e-6)
        assert torch.allclose(model.encode_text(tokens), ref.get_text_features(input_ids=tokens).pooler_output,
                              atol=1e-6)
        f = model.encode_image(x, normalize=True)
        assert torch.allclose(f.norm(dim=-1), torch.ones(3)) and model.encode_image(x).norm(dim=-1).std() > 0
        img, txt, scale = model(x, tokens)
        assert torch.allclose(scale, ref.logit_scale.exp()) and img.shape == (3, 32) and txt.shape == (5, 32)
        assert torch.allclose(encode_texts(model, tokens), txt, atol=1e-6)     # the toolkit's cached-text path
    twin = copy.deepcopy(model)                                                # a copy owns its text tower
    assert twin.text_tower.text_model is twin.text_model is not model.text_model


@pytest.mark.parametrize("kind", ["clip", "siglip"])
def test_preprocess_equals_the_hf_image_processor(folders, kind):
    _, preprocess, _ = load_hf_clip(folders[kind])
    proc = transformers.AutoImageProcessor.from_pretrained(folders[kind], local_files_only=True)
    rng = np.random.RandomState(0)
    sizes = ((45, 61), (70, 33), (32, 32))              # odd margins: HF's crop offsets floor, torchvision rounds
    images = [Image.fromarray(rng.randint(0, 256, (h, w, 3), dtype=np.uint8)) for h, w in sizes]
    images.append(Image.fromarray(rng.randint(0, 256, (40, 50, 4), dtype=np.uint8), mode="RGBA"))  # alpha on white
    for img in images:
        ours = preprocess(img)
        ref = proc(images=img, return_tensors="pt")["pixel_values"][0]
        assert ours.shape == ref.shape == (3, 32, 32) and ours.dtype == torch.float32
        assert (ours - ref).abs().max() < 1e-5             # fp32 rounding of the fused rescale/normalise only
    assert torch.equal(pickle.loads(pickle.dumps(preprocess))(images[0]), preprocess(images[0]))   # DataLoader workers


@pytest.mark.parametrize("attn", ["sdpa", "eager"])
@pytest.mark.parametrize("kind", ["clip", "siglip"])
def test_text_tower_from_embeddings_equals_encode_text(folders, kind, attn):
    model, _, tok = load_hf_clip(folders[kind], attn_implementation=attn)
    assert model.text_model.config._attn_implementation == attn
    tower = model.text_tower
    assert tower.causal == (kind == "clip") and tower.context_length == tok.context_length
    tokens = tok(SENTENCES)
    ends = tower.end_index(tokens)
    assert ends.tolist() == [int((t == 49407).nonzero()[0]) for t in tokens]
    pool = tower.pool_index(tokens)
    assert torch.equal(pool, ends) if kind == "clip" else (pool == SIGLIP_CONTEXT - 1).all()
    with torch.no_grad():
        ref = model.encode_text(tokens)
        full = tower.features_from_embeddings(tower.token_embedding(tokens), pool)
        chunked = tower.features_from_embeddings(tower.token_embedding(tokens), pool, chunk=2)
        assert torch.allclose(full, ref, atol=1e-6) and torch.allclose(chunked, ref, atol=1e-6)
        cut = int(pool.max()) + 1
        if kind == "clip":                                # causal: exact when cut after the last EOT
            short = tower.features_from_embeddings(tower.token_embedding(tokens[:, :cut]), pool)
            assert torch.allclose(short, ref, atol=1e-5)
        else:
            with pytest.raises(ValueError, match="full context"):
                tower.features_from_embeddings(tower.token_embedding(tokens[:, :10]), pool)


def test_legacy_clip_eos_id_pools_at_argmax():
    """Configs from before transformers PR #24773 say eos_token_id=2; HF then pools at the highest id."""
    cfg = _tiny_config("clip")
    cfg.text_config.eos_token_id = 2
    model = HFCLIP(transformers.CLIPModel(cfg).eval())
    tokens = torch.tensor([[49406, 2, 320, 49407] + [0] * 73])   # a token with id 2 before the real EOT
    tower = model.text_tower
    assert tower.legacy_argmax and tower.pool_index(tokens).tolist() == [3]
    with torch.no_grad():
        feats = tower.features_from_embeddings(tower.token_embedding(tokens), tower.pool_index(tokens))
        assert torch.allclose(feats, model.encode_text(tokens), atol=1e-6)


def test_missing_folders_and_files_say_how_to_get_them(folders, tmp_path):
    with pytest.raises(MissingDataError, match=r"download openai/clip-vit-base-patch16 --local-dir pretrained/hf/"):
        load_hf_clip("openai/clip-vit-base-patch16")
    with pytest.raises(MissingDataError, match="not found.*download"):
        load_hf_clip(tmp_path / "nowhere")
    with pytest.raises(MissingDataError, match="no config.json"):
        load_hf_clip(tmp_path)
    tokenizer_files = {"tokenizer.json", "tokenizer_config.json", "vocab.json", "merges.txt"}
    for what, missing in (("model weights", {"model.safetensors"}), ("image processor", {"preprocessor_config.json"}),
                          ("tokenizer", tokenizer_files)):
        broken = tmp_path / what.replace(" ", "-")
        broken.mkdir()
        for f in folders["clip"].iterdir():
            if f.name not in missing:
                (broken / f.name).write_bytes(f.read_bytes())
        with pytest.raises(MissingDataError, match=f"{what}.*{broken}"):
            load_hf_clip(broken)
    other = tmp_path / "bert"
    other.mkdir()
    (other / "config.json").write_text(json.dumps({"model_type": "bert"}))
    with pytest.raises(UserError, match="'bert' model"):
        load_hf_clip(other)


@pytest.mark.parametrize("kind", ["clip", "siglip"])
def test_vmapped_functional_call_of_the_image_tower(folders, kind):
    from torch.func import functional_call, vmap

    model, _, _ = load_hf_clip(folders[kind])
    params = {n: p.detach() for n, p in model.named_parameters() if n.startswith("visual.")}
    stacked = {n: torch.stack([p + 0.01 * b * torch.randn_like(p) for b in range(3)]) for n, p in params.items()}
    x = torch.randn(3, 2, 3, 32, 32)

    def one(p, xb):
        return functional_call(model, p, (xb,))[0]          # forward(image): normalised image features

    with torch.no_grad(), vmap_friendly():
        together = vmap(one)(stacked, x)
        alone = [functional_call(model, {n: s[b] for n, s in stacked.items()}, (x[b],))[0] for b in range(3)]
    assert together.shape == (3, 2, 32)
    for b in range(3):
        assert torch.allclose(together[b], alone[b], atol=1e-5)
    assert not torch.allclose(alone[0], alone[2], atol=1e-3)   # the copies differ


def _converted(seed: int = 0, name: str = "RLCF-Tiny-Test"):
    oc, _, oc_tok = make_clip(name, seed)
    return oc.eval(), HFCLIP(open_clip_to_hf(oc)), oc_tok


@pytest.mark.parametrize("quick_gelu", [False, True])
def test_open_clip_converted_to_hf_gives_the_same_features(tmp_path, quick_gelu):
    if quick_gelu:
        cfg = json.loads((FIXTURES / "RLCF-Tiny-Test.json").read_text())
        (tmp_path / "RLCF-Tiny-Quick.json").write_text(json.dumps({**cfg, "quick_gelu": True}))
        from tasks.common.clip import load_clip

        torch.manual_seed(0)
        oc, _, oc_tok = load_clip("RLCF-Tiny-Quick", None, config_file=tmp_path / "RLCF-Tiny-Quick.json")
        oc, hf = oc.eval(), HFCLIP(open_clip_to_hf(oc))
    else:
        oc, hf, oc_tok = _converted()
    assert hf.config.text_config.hidden_act == ("quick_gelu" if quick_gelu else "gelu")
    x, tokens = torch.randn(4, 3, 32, 32), oc_tok(SENTENCES)
    hf_tokens = HFTokenizer(hf_clip_tokenizer_from_open_clip(tmp_path / "tok"), 77)(SENTENCES)
    with torch.no_grad():
        img, ref_img = hf.encode_image(x), oc.encode_image(x)
        txt, ref_txt = hf.encode_text(tokens), oc.encode_text(tokens)
        assert torch.allclose(img, ref_img, atol=1e-5) and torch.allclose(txt, ref_txt, atol=1e-5)
        assert torch.allclose(hf.encode_text(hf_tokens), ref_txt, atol=1e-5)   # HF padding: same features
        logits = hf.logit_scale.exp() * hf.encode_image(x, True) @ hf.encode_text(tokens, True).t()
        ref_logits = oc.logit_scale.exp() * oc.encode_image(x, True) @ oc.encode_text(tokens, True).t()
        assert torch.allclose(logits, ref_logits, atol=1e-5)
        ot, ht = text_tower(oc), text_tower(hf)
        assert ht is hf.text_tower and torch.equal(ot.pool_index(tokens), ht.pool_index(tokens))
        cut = int(ht.pool_index(tokens).max()) + 1
        emb = torch.randn(5, cut, 32) * 0.02 + ht.token_embedding(tokens[:, :cut])   # learned-context-like rows
        assert torch.allclose(ht.features_from_embeddings(emb, ht.pool_index(tokens)),
                              ot.features_from_embeddings(emb, ot.pool_index(tokens)), atol=1e-5)
    folder = tmp_path / "saved"                           # and through save_pretrained + load_hf_clip
    open_clip_to_hf(oc).save_pretrained(folder)
    proc = transformers.CLIPImageProcessor(size={"shortest_edge": 32}, crop_size={"height": 32, "width": 32})
    proc.save_pretrained(folder)
    hf_clip_tokenizer_from_open_clip(folder)
    loaded, _, _ = load_hf_clip(folder)
    with torch.no_grad():
        assert torch.allclose(loaded.encode_image(x), ref_img, atol=1e-5)
        assert torch.allclose(loaded.encode_text(tokens), ref_txt, atol=1e-5)


def _reward(folders, kind):
    rmodel, _, rtok = load_hf_clip(folders[f"{kind}-reward"])
    reward = rlcf.CLIPReward(rmodel, rtok)
    reward.set_candidates(class_prompts(CLASSNAMES))
    return reward


@pytest.mark.parametrize("kind", ["clip", "siglip"])
@pytest.mark.parametrize("policy_kind", ["encoder", "prompt"])
def test_rlcf_adapts_over_the_wrapper_and_restores_it(folders, kind, policy_kind, monkeypatch):
    model, _, tok = load_hf_clip(folders[kind])
    policy = (EncoderPolicy(model, CLASSNAMES, tok) if policy_kind == "encoder"
              else PromptPolicy(model, CLASSNAMES, tok))
    lr = 1e-4 if policy_kind == "encoder" else 5e-3     # near the official scale (see tests/test_batched.py)
    method = rlcf.create_method("rlcf", policy, _reward(folders, kind), steps=2, lr=lr, selection=0.25)
    g = torch.Generator().manual_seed(3)
    views = [torch.randn(8, 3, 32, 32, generator=g) for _ in range(3)]
    state0 = {k: v.clone() for k, v in policy.state_dict().items()}
    vmapped, call = [], rlcf.forward.StackedForward._call
    monkeypatch.setattr(rlcf.forward.StackedForward, "_call", lambda c, *a, **kw: vmapped.append(1) or call(c, *a, **kw))
    with torch.no_grad():
        zero = [rlcf.adapt(policy, v, "zeroshot") for v in views]
        alone = [method(v) for v in views]
        together = method.forward_batch(views)               # stacked parameters under vmap
    assert vmapped, "the batch must run through the vmapped functional_call, not one sample after the other"
    for a, t in zip(alone, together, strict=True):
        assert a.shape == (len(CLASSNAMES),) and torch.isfinite(a).all()
        assert torch.allclose(a, t, atol=1e-5, rtol=0), (a - t).abs().max()
    assert any(not torch.allclose(z, a, atol=1e-4) for z, a in zip(zero, alone, strict=True))   # it adapted
    for k, v in policy.state_dict().items():
        assert torch.equal(v, state0[k]), k
    trainable = set(policy.trainable_parameters())
    if policy_kind == "encoder":
        assert trainable == {f"clip.visual.{n}" for n, _ in model.visual.named_parameters()}
    else:
        assert trainable == {"ctx"}
    if policy_kind == "prompt" and kind == "siglip":
        assert policy.token_suffix.shape[1] + policy.n_ctx + policy.n_prefix == SIGLIP_CONTEXT   # full context


@pytest.mark.parametrize("policy_kind", ["prompt", "encoder"])
def test_tuning_the_converted_model_equals_tuning_the_open_clip_model(policy_kind):
    oc, hf, tok = _converted()
    rclip, _, rtok = make_clip("RLCF-Tiny-Reward", 1)
    reward = rlcf.CLIPReward(rclip, rtok)
    reward.set_candidates(class_prompts(CLASSNAMES))
    views = torch.randn(16, 3, 32, 32, generator=torch.Generator().manual_seed(5))
    out = []
    for clip in (oc, hf):
        cls = PromptPolicy if policy_kind == "prompt" else EncoderPolicy
        policy = cls(clip, CLASSNAMES, tok)
        lr = 5e-2 if policy_kind == "prompt" else 1e-3
        with torch.no_grad():
            out.append(rlcf.adapt(policy, views, "rlcf", reward=reward, steps=2, lr=lr, selection=0.25))
    assert torch.allclose(out[0], out[1], atol=1e-4), (out[0] - out[1]).abs().max()
    with torch.no_grad():
        assert not torch.allclose(out[0], rlcf.adapt(PromptPolicy(oc, CLASSNAMES, tok), views, "zeroshot"), atol=1e-3)



def test_what_hf_clip_cannot_express_is_refused():
    oc, _, _ = make_clip()
    oc.text_pool_type = "last"
    with pytest.raises(NotImplementedError, match="EOT"):
        open_clip_to_hf(oc)
    oc, _, _ = make_clip()
    oc.transformer.resblocks[0].ls_1 = torch.nn.Linear(32, 32)   # stands in for a LayerScale
    with pytest.raises(NotImplementedError, match="ls_1"):
        open_clip_to_hf(oc)
    cfg = _tiny_config("siglip")
    cfg.vision_config.vision_use_head = False
    with pytest.raises(NotImplementedError, match="vision_use_head"):
        HFCLIP(transformers.SiglipModel(cfg))


@pytest.mark.parametrize("kind", ["clip", "siglip"])
def test_retrieval_both_directions_over_the_wrapper(folders, kind):
    from tasks.retrieval.policies import ImageToTextPolicy, TextToImagePolicy, encode_text_gallery

    model, _, tok = load_hf_clip(folders[kind])
    rmodel, _, rtok = load_hf_clip(folders[f"{kind}-reward"])
    reward, captions = rlcf.CLIPReward(rmodel, rtok), [f"a {c} {s}" for c in ("red", "blue") for s in ("dot", "star")]
    images = torch.randn(5, 3, 32, 32, generator=torch.Generator().manual_seed(2))
    with torch.no_grad():
        gallery = model.encode_image(images)
    reward.set_candidates(captions)
    i2t = ImageToTextPolicy(model, encode_text_gallery(model, tok, captions))
    t2i = TextToImagePolicy(model, gallery, tok)
    names = set(t2i.trainable_parameters())
    assert names == {f"clip.{n}" for n, _ in model.named_parameters() if not n.startswith("visual.")}
    for policy, queries, candidates in ((i2t, list(images[:3]), captions), (t2i, captions[:3], images)):
        reward.set_candidates(candidates)
        method = rlcf.create_method("rlcf", policy, reward, lr=1e-5, selection=1.0, k=3)
        state0 = {k: v.clone() for k, v in policy.state_dict().items()}
        with torch.no_grad():
            alone = [method(q) for q in queries]
            together = method.forward_batch(queries)
        for a, t in zip(alone, together, strict=True):
            assert torch.isfinite(a).all() and torch.allclose(a, t, atol=1e-5, rtol=0)
        assert all(torch.equal(v, state0[k]) for k, v in policy.state_dict().items())
