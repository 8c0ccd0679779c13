"""The peers' paper configurations against the values of their official files, the world rows, and the class
descriptions (CuPL / GPT descriptors) that their text classifiers take through ``data.templates``."""
from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F

from conftest import CLASSNAMES, make_clip
from tasks.classification.datasets import ClassDescriptions, resolve_templates
from tasks.classification.policies import EncoderPolicy, PrototypePolicy, class_text_features
from tasks.classification.task import DEFAULTS, build_dataset_from_config, build_policy
from tasks.common.config import for_set, load_config
from tasks.common.data import UserError
from test_official_quirks import TDA_POS

ROOT = Path(__file__).resolve().parents[1]
CLS = ROOT / "configs" / "classification"
FINE = ("Caltech101", "DTD", "eurosat", "Aircraft", "Food101", "Flower102", "Pets", "Cars", "SUN397", "UCF101")
# TDA's text classifier, which DPE and BoostAdapter share (datasets/*.py `template`)
TDA_TEMPLATES = {"I": "simple", "A": "simple", "V": "simple", "R": "openai", "K": "openai", "Caltech101": "simple",
                 "Cars": "simple", "SUN397": "simple"}
# zhangce01/DPE-CLIP configs/*.yaml: (alpha, beta, lr text = lr image, align)
DPE = {"I": (6.0, 5.0, 6e-4, 0.5), "A": (6.0, 5.0, 3e-4, 2.5), "V": (3.0, 8.0, 5e-4, 0.5), "R": (3.0, 8.0, 6e-4, 0.0),
       "K": (7.0, 7.45, 6e-4, 0.2), "Caltech101": (15.0, 5.0, 6e-4, 0.2), "DTD": (6.0, 3.0, 6e-4, 0.2),
       "eurosat": (3.0, 8.0, 5e-5, 0.2), "Aircraft": (6.0, 2.0, 6e-4, 0.2), "Food101": (3.0, 1.0, 2e-4, 0.2),
       "Flower102": (2.5, 5.0, 1e-4, 0.2), "Pets": (4.0, 7.0, 5e-5, 0.2), "Cars": (3.0, 7.0, 1e-4, 1.5),
       "SUN397": (6.0, 3.0, 2e-4, 0.2), "UCF101": (9.0, 8.0, 4e-4, 0.2)}
# taolinzhang/BoostAdapter configs/*.yaml `delta` (imagenet.yaml has none: one view, no boosting)
DELTA = {"A": 3, "V": 1, "R": 3, "K": 1, "Caltech101": 2, "DTD": 0, "eurosat": 0, "Aircraft": 2, "Food101": 3,
         "Flower102": 0, "Pets": 0, "Cars": 3, "SUN397": 1, "UCF101": 0}


def test_dpe_per_dataset_settings():
    cfg = load_config(DEFAULTS, CLS / "dpe.yaml")
    for set_id, (alpha, beta, lr, align) in DPE.items():
        one = for_set(cfg, set_id)
        a, o = one["adapt"], one["adapt"]["options"]
        assert (o["pos_alpha"], o["pos_beta"], a["lr"], o["align_weight"]) == (alpha, beta, lr, align), set_id
        assert (a["steps"], a["eps"], a["weight_decay"], o["pos_capacity"], o["update_steps"]) == (0, 1e-3, 0.1, 3, 1)
        assert o["evolve_entropy"] == 0.1 and o["align_temperature"] == 0.01 and a["selection"] == 0.1
        assert o["predict_all_views"] == (set_id == "A"), set_id                 # the IN-A branch
        multi = set_id in "IAVRK"
        assert one["views"]["n"] == (64 if multi else 1) and bool(one["views"]["augmix"]) == multi, set_id
        assert one["data"]["exclude"] == ("sh" if set_id in "AVRK" else None), set_id
        assert one["data"]["templates"] == TDA_TEMPLATES.get(set_id, "coop"), set_id
        assert one["encoder"]["ensemble"] and (one["run"]["shuffle"], one["run"]["shuffle_seed"]) == ("torch_loader", 1)
    clean = load_config(DEFAULTS, CLS / "dpe.yaml", ["per_set.A.adapt.options.predict_all_views=false"])
    assert not for_set(clean, "A")["adapt"]["options"]["predict_all_views"]


def test_boostadapter_per_dataset_settings():
    cfg = load_config(DEFAULTS, CLS / "boostadapter.yaml")
    for set_id, (alpha, beta) in TDA_POS.items():
        one = for_set(cfg, set_id)
        o = one["adapt"]["options"]
        assert (o["pos_alpha"], o["pos_beta"]) == (alpha, beta), set_id
        assert (o["neg_alpha"], o["neg_beta"], o["neg_capacity"], o["pos_capacity"]) == (0.117, 1.0, 2, 3)
        assert o["neg_entropy"] == [0.2, 0.5] and o["neg_mask"] == [0.03, 1.0] and o["neg_fifo"]
        if set_id in DELTA:
            assert o["delta"] == DELTA[set_id], set_id
        assert o["view0_history"] == (set_id in FINE) and o["boost_selection"] == 0.1, set_id
        assert one["views"]["n"] == (1 if set_id == "I" else 64) and not one["views"]["augmix"], set_id
        assert one["data"]["exclude"] == ("sh" if set_id in "AVRK" else None), set_id
        assert one["data"]["templates"] == TDA_TEMPLATES.get(set_id, "coop"), set_id
        assert (one["run"]["shuffle"], one["run"]["shuffle_seed"]) == ("torch_loader", 1)


def test_tps_dmn_mta_settings():
    tps = load_config(DEFAULTS, CLS / "tps.yaml")
    for set_id in ("I", "A", "V", "R", "K", *FINE):
        one = for_set(tps, set_id)
        assert one["adapt"]["lr"] == (1e-3 if set_id in FINE else 5e-3), set_id
        assert (one["adapt"]["steps"], one["adapt"]["weight_decay"], one["adapt"]["selection"]) == (1, 0.01, 0.1)
        assert one["views"]["n"] == 64 and one["views"]["augmix"] is None         # TPT's rule: fine-grained AugMix
        assert one["policy"] == "prototype" and one["prototype"] == {"ensemble": True, "pooling": "groups"}
        assert one["data"]["templates"] == "openai"                               # the 80 CLIP templates
    dmn = load_config(DEFAULTS, CLS / "dmn.yaml")
    dmn_text = {"Caltech101": "simple", "SUN397": "simple", "Cars": "a photo of a {}, a type of car."}
    for set_id in ("I", "A", "V", "R", "K", *FINE):
        one = for_set(dmn, set_id)
        o = one["adapt"]["options"]
        assert (o["memory_size"], o["beta"], o["fusion_weight"]) == (50, 5.5, 1.0)
        assert o["search_weights_on_test_labels"] is False                       # never by default
        assert one["views"]["n"] == 32 and one["views"]["augmix"] is None and one["adapt"]["selection"] == 0.1
        assert one["data"]["templates"] == ("simple" if len(set_id) == 1 else dmn_text.get(set_id, "coop")), set_id
        assert (one["run"]["shuffle"], one["run"]["shuffle_seed"]) == ("torch_loader", 0)   # set_random_seed(0)
    mta = load_config(DEFAULTS, CLS / "mta.yaml")
    assert mta["views"] == {**mta["views"], "n": 64, "augmix": False}              # never AugMix (no --tpt)
    assert mta["adapt"]["options"] == {"lambda_y": 0.2, "lambda_q": 4.0, "max_iter": 5, "tol": 1e-6, "knn": 0.3}
    assert mta["data"]["templates"] == "single" and mta["adapt"]["steps"] == 0
    assert mta["run"]["seed"] == 1 and tps["run"]["seed"] == 1234                  # the README commands' seeds


def test_world_rows_and_tuning_grids():
    import rlcf
    from tasks.demo.cells import CONFIGS, PEER_ROWS
    from tasks.demo.tune import TUNE_GRID

    rows = dict((cfg, label) for label, cfg in PEER_ROWS)
    for name, cfg_name in (("mta", "mta.yaml"), ("tps", "tps.yaml"), ("dmn", "dmn.yaml"), ("dpe", "dpe.yaml"),
                           ("boostadapter", "boostadapter.yaml")):
        assert cfg_name in rows, cfg_name
        cfg = load_config(DEFAULTS, CONFIGS / cfg_name)
        assert cfg["method"] == name and cfg["views"]["n"] == 32 and cfg["model"]["arch"] == "World-Policy-RN"
        assert ("online" in rows[cfg_name]) == (not rlcf.get_method(name).episodic)
        if name in ("tps", "dpe"):                    # a learning rate: a dev grid around the provisional official one
            assert cfg["adapt"]["lr"] in TUNE_GRID[cfg_name]
            assert "pending" in (CONFIGS / cfg_name).read_text()
    assert not load_config(DEFAULTS, CONFIGS / "dmn.yaml")["adapt"]["options"]["search_weights_on_test_labels"]


# ------------------------------------------------------------------ class descriptions
def write_descriptions(path: Path, names=CLASSNAMES) -> Path:
    path.write_text(json.dumps({n.replace("_", " "): [f"a {n} seen from afar.", f"a close-up of a {n}."]
                                for n in names}))
    return path


def test_descriptions_are_template_entries(tmp_path):
    desc = write_descriptions(tmp_path / "cupl.json")
    got = resolve_templates(["simple", str(desc)])
    assert len(got) == 8 and isinstance(got[-1], ClassDescriptions)
    assert got[-1]("house_finch") == ["a house_finch seen from afar.", "a close-up of a house_finch."]
    assert resolve_templates(str(desc))[0].sentences == got[-1].sentences
    assert resolve_templates(["a {}.", "single"]) == ["a {}.", "a photo of a {}."]
    with pytest.raises(UserError, match="no sentences for 1 of"):
        ClassDescriptions(write_descriptions(tmp_path / "short.json", CLASSNAMES[:-1])).check(CLASSNAMES)
    with pytest.raises(FileNotFoundError, match="descriptions file not found"):
        resolve_templates(str(tmp_path / "missing.json"))
    (tmp_path / "bad.json").write_text(json.dumps({"cat": "not a list"}))
    with pytest.raises(UserError, match="non-empty list"):
        ClassDescriptions(tmp_path / "bad.json")


@pytest.mark.parametrize("pooling", ["texts", "groups"])
def test_class_features_with_descriptions_restated(tmp_path, pooling):
    clip, _, tok = make_clip()
    desc = ClassDescriptions(write_descriptions(tmp_path / "cupl.json"))
    templates = ["a photo of a {}.", "art of the {}."]
    got = class_text_features(clip, tok, CLASSNAMES, templates + [desc], pooling)
    with torch.no_grad():
        for c, name in enumerate(CLASSNAMES):
            words = name.replace("_", " ")
            t = F.normalize(clip.encode_text(tok([x.format(words) for x in templates])).float(), dim=-1)
            d = F.normalize(clip.encode_text(tok(desc(name))).float(), dim=-1)
            ref = torch.cat([t, d]).mean(0) if pooling == "texts" else (t.mean(0) + d.mean(0)) / 2   # CuPL / TPS micro
            assert torch.allclose(got[c], F.normalize(ref, dim=-1), atol=1e-5), name
    plain = class_text_features(clip, tok, CLASSNAMES, templates)
    assert not torch.allclose(plain, got, atol=1e-3)
    legacy = torch.stack([F.normalize(clip.encode_text(tok([x.format(n.replace("_", " ")) for n in CLASSNAMES]))
                                      .float(), dim=-1) for x in templates]).mean(0)
    assert torch.allclose(EncoderPolicy(clip, CLASSNAMES, tok, templates=templates).text_feats,
                          F.normalize(legacy, dim=-1), atol=1e-6)           # templates alone: CLIP's ensemble


def test_data_descriptions_reach_the_text_classifier(tmp_path):
    from test_runner import make_dtd

    data = make_dtd(tmp_path / "data")
    desc = tmp_path / "dtd.json"
    desc.write_text(json.dumps({n: [f"{n} fabric.", f"a {n} pattern."] for n in ("banded", "blotchy", "braided")}))
    base = [f"data.root={data}", "data.set_id=DTD", "data.classnames=json", "encoder.ensemble=true"]
    plain = build_dataset_from_config(load_config(DEFAULTS, None, base))
    with_desc = build_dataset_from_config(load_config(DEFAULTS, None, base + [f"data.descriptions={desc}"]))
    only = build_dataset_from_config(load_config(DEFAULTS, None, base + [f"data.templates={desc}"]))
    assert isinstance(with_desc.templates[-1], ClassDescriptions) and with_desc.templates[:-1] == plain.templates
    assert len(only.templates) == 1 and only.templates[0].sentences == with_desc.templates[-1].sentences
    clip, _, tok = make_clip()
    cfg = load_config(DEFAULTS, None, base)
    enc = build_policy("encoder", clip, with_desc.classnames, tok, cfg, with_desc.templates)
    proto = build_policy("prototype", clip, with_desc.classnames, tok, cfg, with_desc.templates)
    assert torch.allclose(enc.text_feats, proto.prototypes) and torch.equal(proto.shift, torch.zeros_like(proto.shift))
    assert not torch.allclose(enc.text_feats, build_policy("encoder", clip, plain.classnames, tok, cfg,
                                                           plain.templates).text_feats, atol=1e-3)
    with pytest.raises(UserError, match="not a .json"):
        build_dataset_from_config(load_config(DEFAULTS, None, base + ["data.descriptions=notes.txt"]))
    desc.write_text(json.dumps({"banded": ["x."]}))
    with pytest.raises(UserError, match="no sentences for 2 of the 3"):
        build_dataset_from_config(load_config(DEFAULTS, None, base + [f"data.descriptions={desc}"]))


def test_prototype_policy_logits():
    clip, _, tok = make_clip()
    policy = PrototypePolicy(clip, CLASSNAMES, tok)
    enc = EncoderPolicy(clip, CLASSNAMES, tok)
    x = torch.randn(3, 3, 32, 32, generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        assert torch.allclose(policy(x), enc(x), atol=1e-5)                       # zero shift: the zero-shot logits
        policy.shift.add_(torch.randn_like(policy.shift))
        feats = F.normalize(enc.text_feats + policy.shift, dim=-1)
        assert torch.allclose(policy(x), clip.logit_scale.exp() * enc.encode_query(x) @ feats.t(), atol=1e-5)
    assert set(policy.trainable_parameters()) == {"shift"} and not policy.query_trainable
