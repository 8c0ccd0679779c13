"""Official behaviours that move reported numbers, each pinned against a restatement of the official
formula (facts from mzhaoshuai/RLCF, azshue/TPT, hee-suk-yoon/C-TPT, kdiAAA/TDA, FarinaMatteo/zero)."""
from __future__ import annotations

import inspect
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from PIL import Image
from torch.utils.data import DataLoader

import rlcf
from conftest import CLASSNAMES, FIXTURES, make_clip
from tasks.classification.datasets import resolve_templates
from tasks.methods.zero_vote import zero_vote
from tasks.classification.task import DEFAULTS, build_dataset_from_config, build_policy, build_reward, \
    class_template
from tasks.common.config import for_set, load_config
from tasks.common.runner import sample_order

ROOT = Path(__file__).resolve().parents[1]
CLS = ROOT / "configs" / "classification"


def tiny_reward_spec() -> dict:
    return {"arch": "RLCF-Tiny-Reward", "pretrained": None, "config_file": str(FIXTURES / "RLCF-Tiny-Reward.json"),
            "weight": 2.5, "ensemble": None}


# ------------------------------------------------------------------ 1. encoder-tuning class prompts
def test_open_clip_tokenizer_reads_underscores_as_tokens():
    """The facts' token ids of the official tokenizer: 'a_photo_of_a tench.' vs 'a photo of a tench.'."""
    import open_clip

    tok = open_clip.get_tokenizer("ViT-B-16")
    ids = [int(t) for t in tok(["a_photo_of_a tench.", "a photo of a tench."])[:, 1:12].reshape(-1)]
    assert ids[:10] == [320, 318, 1125, 318, 539, 318, 320, 1149, 634, 269]
    assert ids[11:18] == [320, 1125, 539, 320, 1149, 634, 269]


def test_encoder_configs_use_the_official_underscore_prompts_for_policy_and_reward():
    for name in ("rlcf-tune", "rlcf-s-tune", "rlcf-s-m-tune", "kd-tune"):
        assert class_template(load_config(DEFAULTS, CLS / f"{name}.yaml")) == "a_photo_of_a {}.", name
    cfg = load_config(DEFAULTS, CLS / "rlcf-tune.yaml")
    cfg["reward"] = tiny_reward_spec()
    clip, _, tok = make_clip()
    policy = build_policy("encoder", clip, CLASSNAMES, tok, cfg)
    reward = build_reward(cfg, CLASSNAMES, torch.device("cpu"))
    # official CLIPCLS_TTA: prompt_prefix ("a_photo_of_a", raw) + " " + name ("_" -> " ") + "."
    texts = ["a_photo_of_a " + n.replace("_", " ") + "." for n in CLASSNAMES]
    with torch.no_grad():
        ref_policy = F.normalize(clip.encode_text(tok(texts)), dim=-1)
        ref_reward = F.normalize(reward.model.encode_text(reward.tokenizer(texts)), dim=-1)
    assert torch.allclose(policy.class_features(), ref_policy, atol=1e-5)
    assert torch.allclose(reward.candidate_feats, ref_reward, atol=1e-5)
    # the clean prompts are one override away and give other features
    clean = load_config(DEFAULTS, CLS / "rlcf-tune.yaml", ["prompt.class_template=a photo of a {}."])
    clip2, _, tok2 = make_clip()
    assert not torch.allclose(build_policy("encoder", clip2, CLASSNAMES, tok2, clean).class_features(),
                              ref_policy, atol=1e-3)


def test_prompt_tuning_reward_reads_the_words():
    """Official prompt tuning replaces the underscores of ctx_init: the reward reads 'a photo of a <name>.'."""
    cfg = load_config(DEFAULTS, CLS / "rlcf-prompt.yaml", ["prompt.ctx_init=a_photo_of_a"])
    assert class_template(cfg) == "a photo of a {}."
    clip, _, tok = make_clip()
    policy = build_policy("prompt", clip, CLASSNAMES, tok, cfg)
    assert policy.prompt_prefix == "a photo of a" and policy.n_ctx == 4
    with pytest.raises(ValueError, match="must contain"):
        class_template(load_config(DEFAULTS, None, ["prompt.class_template=no placeholder"]))
    own = load_config(DEFAULTS, CLS / "rlcf-prompt.yaml", ["prompt.class_template=a sketch of the {}."])
    policy = build_policy("prompt", clip, CLASSNAMES, tok, own)          # the one template reaches the policy too
    assert policy.prompt_prefix == "a sketch of the" and class_template(own) == "a sketch of the {}."
    from tasks.common.data import UserError

    with pytest.raises(UserError, match="prompt.class_template"):
        build_policy("prompt", clip, CLASSNAMES, tok, load_config(DEFAULTS, None, ["prompt.class_template={} here"]))


# ------------------------------------------------------------------ 2. caption TTA token loss
def official_caption_loss(cap, emb, texts, rewards):
    """``capdec_tta.py``: tokenizer(padding=True) -> [BOS, words, PAD(1)...]; logits[:, P-1:-1];
    CE(ignore_index=0, reduction='none') averaged over L; mean(rewards * per-caption loss)."""
    rows = [[cap.bos_id] + cap.tokenizer(t, add_special_tokens=False).input_ids for t in texts]
    length = max(map(len, rows))
    tokens = torch.tensor([r + [cap.pad_id] * (length - len(r)) for r in rows])
    att = torch.tensor([[1] * len(r) + [0] * (length - len(r)) for r in rows])
    prefix = cap.mapper(F.normalize(emb, dim=-1))
    p = prefix.shape[1]
    x = torch.cat([prefix, cap.lm.get_input_embeddings()(tokens)], dim=1)
    mask = torch.cat([torch.ones(len(texts), p, dtype=att.dtype), att], dim=1)
    logits = cap.lm(inputs_embeds=x, attention_mask=mask).logits[:, p - 1:-1]
    ce = F.cross_entropy(logits.reshape(-1, logits.shape[-1]), tokens.reshape(-1), ignore_index=0,
                         reduction="none").reshape(len(texts), length)
    per_caption = ce.mean(dim=1)
    return torch.mean(rewards * per_caption), per_caption


def test_official_caption_token_loss_matches_restatement():
    from tasks.captioning.checkpoint import tiny_captioner
    from tasks.captioning.policy import CaptionPolicy

    caps = ["a red circle", "two small stars in the picture", "a yellow triangle on a green square"]
    cap = tiny_captioner(caps, prefix_dim=16, hidden=32, heads=2, seed=0).eval()
    clip, _, _ = make_clip()
    emb = torch.randn(1, 16)
    rewards = torch.tensor([0.3, -0.1, -0.2])
    expected_loss, per_caption = official_caption_loss(cap, emb.expand(3, -1), caps, rewards)
    policy = CaptionPolicy(cap, clip, token_loss="official")
    score = policy.sequence_logprob(emb, [caps])
    assert torch.allclose(score[0], -per_caption, atol=1e-5)
    loss = rlcf.reinforce_logprob(score, rewards[None])
    assert torch.allclose(loss, expected_loss, atol=1e-6)
    # the pad targets are in: the clean score (own tokens + STOP) differs
    clean = CaptionPolicy(cap, clip, token_loss="clean").sequence_logprob(emb, [caps])
    assert not torch.allclose(clean, score, atol=1e-3)
    for name in ("clipcap-c2f", "clipcap-c2n", "capdec-c2f", "capdec-c2n"):
        from tasks.captioning.task import DEFAULTS as CAP_DEFAULTS
        from tasks.common.precision import resolve_dtype

        c = load_config(CAP_DEFAULTS, ROOT / "configs" / "captioning" / f"{name}.yaml")
        # official OPT precision, fp16 on CUDA: lm_dtype auto resolves to it there (and to float32 on CPU, issue 25)
        assert c["captioner"]["token_loss"] == "official" and c["captioner"]["lm_dtype"] == "auto", name
        assert resolve_dtype(c["captioner"]["lm_dtype"], "cuda", c["adapt"]["amp"]) == torch.float16, name
        assert resolve_dtype(c["captioner"]["lm_dtype"], "cpu", c["adapt"]["amp"]) == torch.float32, name
    with pytest.raises(ValueError, match="token_loss"):
        CaptionPolicy(cap, clip, token_loss="nope")


def test_fp16_opt_runs_caption_tta_on_cpu(tmp_path):
    """Official OPT precision (``torch_dtype=float16``): the frozen LM in fp16, the mapper trains in fp32."""
    from tasks.captioning.checkpoint import captioner_state, load_captioner, save_atomic, tiny_captioner
    from tasks.captioning.policy import CaptionPolicy

    caps = ["a red circle", "two small stars", "a yellow triangle"]
    save_atomic({"model": captioner_state(tiny_captioner(caps, prefix_dim=32, hidden=32, heads=2, seed=0,
                                                         max_new_tokens=5))}, tmp_path / "c.pt")
    cap = load_captioner(tmp_path / "c.pt", lm_dtype=torch.float16)
    assert cap.lm.get_input_embeddings().weight.dtype == torch.float16
    assert next(cap.mapper.parameters()).dtype == torch.float32
    clip, _, tok = make_clip()
    rclip, _, rtok = make_clip("RLCF-Tiny-Reward", 1)
    policy = CaptionPolicy(cap, clip, token_loss="official")
    method = rlcf.create_method("rlcf", policy, rlcf.CLIPReward(rclip, rtok), steps=1, k=3, lr=1e-2, selection=1.0)
    out = method(torch.randn(1, 3, 32, 32))
    assert isinstance(out, str) and all(np.isfinite(method.last_info["losses"]))


# ------------------------------------------------------------------ 3. online stream order
@pytest.mark.parametrize("seed", [0, 1])
def test_torch_loader_order_is_a_shuffled_dataloader_stream(seed):
    torch.manual_seed(seed)
    expected = [int(b) for b in DataLoader(list(range(37)), batch_size=1, shuffle=True)]
    assert sample_order(37, None, seed, "torch_loader") == expected
    assert sample_order(37, 5, seed, "torch_loader") == expected[:5]
    assert sample_order(37, None, None, "torch_loader") == list(range(37))
    with pytest.raises(ValueError, match="shuffle"):
        sample_order(3, None, 0, "numpy")


def test_online_configs_read_the_official_streams():
    sm = load_config(DEFAULTS, CLS / "rlcf-s-m-tune.yaml")
    tda = load_config(DEFAULTS, CLS / "tda.yaml")
    assert (sm["run"]["shuffle"], sm["run"]["shuffle_seed"]) == ("torch_loader", 0)
    assert (tda["run"]["shuffle"], tda["run"]["shuffle_seed"]) == ("torch_loader", 1)
    assert sm["adapt"]["momentum"] == 0.9998


# ------------------------------------------------------------------ 4. TDA
TDA_TEMPLATES = ["itap of a {}.", "a bad photo of the {}.", "a origami {}.", "a photo of the large {}.",
                 "a {} in a video game.", "art of the {}.", "a photo of the small {}."]
# kdiAAA/TDA configs/*.yaml: positive-cache (alpha, beta)
TDA_POS = {"I": (2.0, 5.0), "A": (2.0, 5.0), "V": (1.0, 8.0), "R": (1.0, 8.0), "K": (2.363, 7.45),
           "Caltech101": (5.0, 5.0), "DTD": (2.0, 3.0), "eurosat": (4.0, 8.0), "Aircraft": (2.0, 2.0),
           "Food101": (1.0, 1.0), "Flower102": (1.0, 5.0), "Pets": (2.0, 7.0), "Cars": (1.0, 7.0),
           "SUN397": (2.0, 3.0), "UCF101": (3.0, 8.0)}


def test_tda_per_dataset_settings():
    cfg = load_config(DEFAULTS, CLS / "tda.yaml")
    assert resolve_templates("simple") == TDA_TEMPLATES
    assert len(resolve_templates("openai")) == 80 and resolve_templates("openai")[0] == "a bad photo of a {}."
    for set_id, (alpha, beta) in TDA_POS.items():
        one = for_set(cfg, set_id)
        e = one["adapt"]["options"]
        assert (e["pos_alpha"], e["pos_beta"]) == (alpha, beta), set_id
        assert (e["neg_alpha"], e["neg_beta"], e["neg_capacity"], e["pos_capacity"]) == (0.117, 1.0, 2, 3)
        assert e["neg_entropy"] == [0.2, 0.5] and e["neg_mask"] == [0.03, 1.0]
        assert "per_set" not in one and one["data"]["set_id"] == set_id and one["encoder"]["ensemble"]
        multi = set_id in "AVRK"
        assert one["views"]["n"] == (64 if multi else 1) and bool(one["views"]["augmix"]) == multi, set_id
        assert one["data"]["exclude"] == ("sh" if multi else None), set_id
        templates = {"R": "openai", "K": "openai", "I": "simple", "A": "simple", "V": "simple", "Caltech101": "simple",
                     "Cars": "simple", "SUN397": "simple"}.get(set_id, "coop")
        assert one["data"]["templates"] == templates, set_id


def test_tda_file_name_filter(tmp_path):
    """TDA's listdir drops names containing 'sh': ImageNet-R 'plushie_*' images are not in its stream."""
    from tasks.classification.datasets import imagenet_subset_indices, imagenet_wnids

    wnid = imagenet_wnids()[imagenet_subset_indices("r")[0]]
    d = tmp_path / "imagenet-r" / wnid
    d.mkdir(parents=True)
    for name in ("art_0.jpg", "plushie_1.jpg", "sketch_2.jpg"):
        Image.new("RGB", (8, 8)).save(d / name)
    cfg = load_config(DEFAULTS, None, ["data.set_id=R", f"data.root={tmp_path}", "data.strict=false",
                                       "data.exclude=sh"])
    assert sorted(p.rsplit("/", 1)[-1] for p, _ in build_dataset_from_config(cfg).items) == ["art_0.jpg",
                                                                                            "sketch_2.jpg"]
    cfg["data"]["exclude"] = None
    assert len(build_dataset_from_config(cfg).items) == 3


# ------------------------------------------------------------------ 5. ZERO tie-break
def official_zero(logits: torch.Tensor, gamma: float) -> torch.Tensor:
    """FarinaMatteo/zero HEAD (cbd7949+): votes of the confident views; ties broken by the non-selected
    views in entropy order (greedy_break), fallback ``break_sample_tie`` with its bitwise NOT."""
    p = logits.softmax(1)
    ent = -(p * p.log()).sum(1)
    full_idx = torch.argsort(ent)
    k = int(logits.shape[0] * gamma)
    lf = logits[full_idx[:k]]
    p_bar = F.softmax(lf / torch.finfo(lf.dtype).eps, dim=1).sum(0)
    max_count, pred = p_bar.max(0)
    ties = [int(pred)] + [i for i in range(logits.shape[1]) if p_bar[i] == max_count and i != int(pred)]
    if len(ties) > 1:
        rest = logits[full_idx][k:]
        winner = None
        for row in rest:
            if int(row.argmax()) in ties:
                winner = int(row.argmax())
                break
        if winner is None:
            row = rest[0].clone()
            row[~torch.tensor(ties)] = float("-inf")
            winner = int(row.argmax())
        p_bar[winner] += 1
    return p_bar


def test_zero_tie_break_follows_entropy_order():
    logits = torch.zeros(10, 4)
    logits[0, 0], logits[1, 1], logits[2, 2] = 30.0, 29.0, 28.0    # 3 selected views, a 3-way tie
    logits[3, 3] = 1.0                                             # view 3: argmax 3, not tied
    logits[4, 1] = 1.0                                             # original order would pick class 1 here
    logits[9, 2] = 9.0                                             # most confident of the rest: class 2
    ours = zero_vote(logits, 0.3)
    assert ours.argmax() == official_zero(logits, 0.3).argmax() == 2
    assert torch.equal(ours, torch.round(official_zero(logits, 0.3)))
    assert zero_vote(logits, 0.3, tie_break="view_order").argmax() == 1   # the code before cbd7949
    with pytest.raises(ValueError, match="tie_break"):
        zero_vote(logits, 0.3, tie_break="random")


def test_zero_official_fallback_can_pick_an_untied_class():
    logits = torch.zeros(10, 5)
    logits[0, 0], logits[1, 2], logits[2, 4] = 30.0, 29.0, 28.0     # tie {0, 2, 4}
    logits[3:, 1] = torch.linspace(5, 1, 7)                         # every remaining view says 1: no match
    logits[3:, 3] = 0.5
    off = official_zero(logits, 0.3)
    ours = zero_vote(logits, 0.3)
    assert torch.equal(ours, torch.round(off))
    # ~[0, 2, 4] = [-1, -3, -5] masks classes 4, 2, 0, i.e. the tie itself: the extra vote goes to class 1
    assert ours.tolist() == [1.0, 1.0, 1.0, 0.0, 1.0]
    clean = zero_vote(logits, 0.3, official_fallback=False)
    assert clean.tolist() == [2.0, 0.0, 1.0, 0.0, 1.0]   # the tied class with the highest logit (first of equals)
    for seed in range(20):   # random logits: same votes as the restatement
        g = torch.Generator().manual_seed(seed)
        x = torch.randn(64, 6, generator=g) * 4
        assert torch.equal(zero_vote(x, 0.3), torch.round(official_zero(x, 0.3))), seed


# ------------------------------------------------------------------ 7. optimiser defaults
def test_tpt_and_ctpt_use_adamw_default_weight_decay():
    default = inspect.signature(torch.optim.AdamW).parameters["weight_decay"].default
    assert default == 0.01
    clip, _, tok = make_clip()
    for name in ("tpt-prompt", "ctpt-prompt"):
        cfg = load_config(DEFAULTS, CLS / f"{name}.yaml")
        assert cfg["adapt"]["weight_decay"] == default, name
        policy = build_policy("prompt", clip, CLASSNAMES, tok, cfg)
        method = rlcf.create_method(cfg["method"], policy, None, rlcf.AdaptConfig(**cfg["adapt"]))
        assert method.optimizer.param_groups[0]["weight_decay"] == default
    for name in ("rlcf-prompt", "rlcf-tune", "kd-tune"):   # RLCF's own scripts pass 5e-4
        assert load_config(DEFAULTS, CLS / f"{name}.yaml")["adapt"]["weight_decay"] == 5e-4


def test_ctpt_per_dataset_lambda_and_augmix():
    cfg = load_config(DEFAULTS, CLS / "ctpt-prompt.yaml")
    for set_id in "AVRK":
        one = for_set(cfg, set_id)
        assert one["adapt"]["options"]["ctpt_lambda"] == 20.0 and one["views"]["augmix"] is True
    for set_id in ("I", "Pets", "DTD"):
        one = for_set(cfg, set_id)
        assert one["adapt"]["options"]["ctpt_lambda"] == 50.0 and one["views"]["augmix"] is None   # TPT rule


# ------------------------------------------------------------------ 8. precision
def test_amp_auto_is_fp16_on_cuda_fp32_on_cpu():
    from rlcf.config import resolve_precision

    assert rlcf.AdaptConfig().amp == "auto"
    assert resolve_precision("auto", "cpu") == "fp32" and resolve_precision("auto", "cuda") == "fp16"
    assert resolve_precision(None, "cuda") == "fp32" and resolve_precision("bf16", "cpu") == "bf16"
    with pytest.raises(ValueError, match="amp"):
        rlcf.AdaptConfig(amp="fp8")


@pytest.mark.parametrize("amp", ["auto", "fp16", "bf16", None])
def test_records_say_which_precision_ran(amp, views):
    from tasks.classification.task import ClassificationTask

    clip, _, tok = make_clip()
    policy = build_policy("prompt", clip, CLASSNAMES, tok, load_config(DEFAULTS))
    method = rlcf.create_method("tpt", policy, amp=amp, selection=0.25)
    rec = ClassificationTask(method, None, None).process(0, (views, 1))
    assert rec["precision"] == {"auto": "fp32", None: "fp32"}.get(amp, amp)
    assert method.last_info["precision"] == rec["precision"]


# ------------------------------------------------------------------ 9. RLCF-S for captioning
@pytest.mark.parametrize("name", ["clipcap-s-c2f", "clipcap-s-c2n", "capdec-s-c2f", "capdec-s-c2n"])
def test_caption_rlcf_s_uses_the_official_reward_ensemble(name):
    from tasks.captioning.task import DEFAULTS as CAP_DEFAULTS
    from tasks.common.clip import build_reward as build_reward_models

    cfg = load_config(CAP_DEFAULTS, ROOT / "configs" / "captioning" / f"{name}.yaml")
    members = cfg["reward"]["ensemble"]
    assert [(m["arch"], m["confidence"]) for m in members] == [("ViT-L-14-336", 10), ("RN50x64", 3), ("ViT-L-14", 5)]
    assert cfg["adapt"]["k"] in (6, 10) and cfg["captioner"]["token_loss"] == "official"
    tiny = dict(cfg["reward"], ensemble=[{**tiny_reward_spec(), "confidence": m["confidence"]} for m in members])
    reward = build_reward_models(tiny, torch.device("cpu"))
    assert isinstance(reward, rlcf.EnsembleReward) and reward.weights == [0.56, 0.17, 0.28]
