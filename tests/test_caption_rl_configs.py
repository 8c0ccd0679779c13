"""Every caption RL config loads and carries the papers' presets (scale, decoding, evaluation, sim / Phi models);
the evaluation presets resolve to open_clip names + tags loaded from local files; the world keeps its CPU sizes."""
from __future__ import annotations

from pathlib import Path

import open_clip
import pytest

from tasks.caption_rl.config import DEFAULTS, build_recipe, dataclass_from, load_rl_config, loop_config
from tasks.caption_rl.decoding import DECODING_PRESETS, resolve_decoding
from tasks.caption_rl.gt_contrastive import GTContrastiveConfig
from tasks.caption_rl.presets import load_named_clip, resolve_eval
from tasks.caption_rl.vlrm import VLRMConfig
from tasks.common.config import load_config
from tasks.common.data import MissingDataError

CONFIGS = Path(__file__).resolve().parents[1] / "configs" / "caption_rl"


@pytest.mark.parametrize("path", sorted(CONFIGS.glob("*.yaml")), ids=lambda p: p.stem)
def test_every_config_loads_and_resolves(path):
    cfg = load_rl_config(str(path))
    e = resolve_eval(cfg["eval"])
    resolve_decoding(e["decoding"], name="eval.decoding")
    if cfg["recipe"] == "gt_contrastive":
        g = cfg["gt"]
        dataclass_from(GTContrastiveConfig, g, policy_decoding=g["decoding"]["policy"],
                       baseline_decoding=g["decoding"]["baseline"])
    else:
        dataclass_from(VLRMConfig, cfg["vlrm"], rollout_decoding=cfg["vlrm"]["decoding"]["rollout"])
    assert loop_config(cfg["recipe"], cfg).steps == 5000


def test_gt_coco_is_the_paper_preset():
    cfg = load_rl_config(str(CONFIGS / "gt_coco.yaml"))
    g = cfg["gt"]
    gc = dataclass_from(GTContrastiveConfig, g, policy_decoding=g["decoding"]["policy"],
                        baseline_decoding=g["decoding"]["baseline"])
    assert gc.policy_decoding == DECODING_PRESETS["chaffin_policy"]
    assert gc.baseline_decoding == DECODING_PRESETS["chaffin_baseline"]
    assert (gc.gt_term, gc.negatives, gc.contrastive_weight, gc.disc_weight, gc.disc_lr) == ("paper", (4, 5), 0.94,
                                                                                          0.06, 7e-5)
    assert cfg["data"]["rows"] == "caption" and g["disc_pretrain"]["steps"] > 0
    e = resolve_eval(cfg["eval"])
    assert (e["preset"], e["arch"], e["self_bleu_n"], e["strip_periods"]) == ("chaffin", "ViT-B-32", 5, True)
    assert resolve_decoding(e["decoding"]) == DECODING_PRESETS["chaffin_eval"]
    assert load_rl_config(str(CONFIGS / "gt_coco_no_gt.yaml"))["gt"]["gt_term"] == "none"
    assert load_rl_config(str(CONFIGS / "gt_coco_train_lm.yaml"))["captioner"]["train_lm"] is True
    assert load_rl_config(str(CONFIGS / "gt_coco_lora.yaml"))["captioner"]["lora"]["enabled"] is True


def test_vlrm_coco_is_the_paper_preset():
    cfg = load_rl_config(str(CONFIGS / "vlrm_coco.yaml"))
    v, o = cfg["vlrm"], cfg["optim"]
    assert (o["batch_size"], o["steps"], o["lr"], o["warmup"], o["clip_grad"]) == (4096, 5000, 1e-5, 20, 1.0)
    assert o["micro_batch"] and 4096 % o["micro_batch"] == 0
    vc = dataclass_from(VLRMConfig, v, rollout_decoding=v["decoding"]["rollout"])
    assert vc.rollout_decoding == DECODING_PRESETS["vlrm_rollout"] and vc.sim == "itm" and vc.itm_weight == 1.0
    e = resolve_eval(cfg["eval"])
    assert (e["arch"], e["tag"]) == ("ViT-g-14", "laion2b_s12b_b42k") and e["pretrained"].endswith(".bin")
    assert e["tag"] in open_clip.list_pretrained_tags_by_model(e["arch"])
    d = resolve_decoding(e["decoding"])
    assert (d.mode, d.num_beams, d.no_repeat_ngram_size, d.min_new_tokens, d.max_new_tokens) == ("beam", 5, 2, 4, 60)
    rs = load_rl_config(str(CONFIGS / "vlrm_rs_coco.yaml"))
    assert rs["recipe"] == "vlrm_retrieval" and rs["vlrm"]["phi"]["arch"] == "ViT-bigG-14"
    assert rs["vlrm"]["phi"]["tag"] in open_clip.list_pretrained_tags_by_model("ViT-bigG-14")
    assert load_rl_config(str(CONFIGS / "vlrm_clip_coco.yaml"))["vlrm"]["sim"] == "clip"


def test_world_keeps_cpu_sizes_and_uses_the_presets():
    from tasks.caption_rl.world import RECIPE_OVERRIDES, WORLD_CLIP_WEIGHT, WORLD_OVERRIDES

    vl = load_config(DEFAULTS, None, [*WORLD_OVERRIDES, *RECIPE_OVERRIDES["vlrm"]])
    assert vl["optim"]["batch_size"] == 64 and vl["optim"]["micro_batch"] is None
    assert (vl["vlrm"]["sim"], vl["vlrm"]["clip_weight"]) == ("clip", WORLD_CLIP_WEIGHT)
    assert resolve_decoding(resolve_eval(vl["eval"])["decoding"]) == DECODING_PRESETS["vlrm_eval"]
    gt = load_config(DEFAULTS, None, [*WORLD_OVERRIDES, *RECIPE_OVERRIDES["gt_contrastive"]])
    assert gt["data"]["rows"] == "caption" and gt["gt"]["disc_pretrain"]["steps"] > 0
    assert resolve_eval(gt["eval"])["self_bleu_n"] == 5


def test_eval_preset_overrides_and_named_clip_loading(tmp_path):
    e = resolve_eval({**DEFAULTS["eval"], "preset": "vlrm", "decoding": {"max_new_tokens": 30, "preset": None}})
    assert resolve_decoding(e["decoding"]).max_new_tokens == 30 and resolve_decoding(e["decoding"]).num_beams == 5
    other = resolve_eval({**DEFAULTS["eval"], "preset": "vlrm", "arch": "RLCF-Tiny-Test"})
    assert other["tag"] is None and other["pretrained"] is None          # the preset's file is for ViT-g-14 only
    with pytest.raises(KeyError, match="eval.preset 'blip' unknown"):
        resolve_eval({**DEFAULTS["eval"], "preset": "blip"})
    with pytest.raises(MissingDataError, match="laion/CLIP-ViT-g-14-laion2B-s12B-b42K"):
        load_named_clip("ViT-g-14", "laion2b_s12b_b42k", str(tmp_path / "ViT-g-14.bin"))
    with pytest.raises(KeyError, match="not an open_clip release"):
        load_named_clip("ViT-g-14", "openai", None)


def test_named_clip_from_a_local_file(tmp_path):
    import torch

    fix = Path(__file__).resolve().parent / "fixtures" / "RLCF-Tiny-Test.json"
    model, _, _ = load_named_clip("RLCF-Tiny-Test", None, None, config_file=str(fix))
    torch.save(model.state_dict(), tmp_path / "tiny.pt")
    again, pre, tok = load_named_clip("RLCF-Tiny-Test", None, str(tmp_path / "tiny.pt"), config_file=str(fix))
    for a, b in zip(model.state_dict().values(), again.state_dict().values()):
        assert torch.equal(a, b)


def test_build_recipe_rejects_unknown_names():
    with pytest.raises(KeyError, match="unknown recipe 'ppo'"):
        build_recipe("ppo", None, None, DEFAULTS)
    with pytest.raises(ValueError, match="data.rows"):
        load_rl_config(None, ["data.rows=pairs"])


def test_keys_of_older_configs_say_where_they_moved(tmp_path):
    """Configs written before the decoding presets fail with the key's new place, in a file or an override."""
    from tasks.common.data import UserError

    old = tmp_path / "old.yaml"
    old.write_text("gt: {num_beams: 5}\n")
    with pytest.raises(UserError, match=r"'gt.num_beams' \(in .*old.yaml\) has moved: gt.decoding.policy.num_beams"):
        load_rl_config(str(old))
    with pytest.raises(UserError, match="has moved: vlrm.decoding.rollout.top_k"):
        load_rl_config(None, ["vlrm.top_k=50"])
    with pytest.raises(UserError, match="has moved: eval.decoding.num_beams"):
        load_rl_config(None, ["eval.num_beams=3"])
    with pytest.raises(UserError, match="old true is paper"):
        load_rl_config(None, ["gt.gt_term=true"])
    with pytest.raises(UserError, match="valid keys here"):          # an unknown key keeps the list of valid ones
        load_rl_config(None, ["gt.nope=1"])
