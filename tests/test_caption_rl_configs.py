"""Every caption RL config loads and carries the papers' presets (scale, decoding, evaluation, sim / Phi models);
the evaluation presets resolve to open_clip names + tags loaded from local files; the world keeps its CPU sizes."""
from __future__ import annotations

from pathlib import Path

import open_clip
import pytest

from tasks.caption_rl.config import defaults, load_rl_config, loop_config
from tasks.caption_rl.decoding import DECODING_PRESETS, resolve_decoding
from tasks.caption_rl.gt.recipe import GTContrastiveConfig
from tasks.caption_rl.presets import load_named_clip, resolve_eval
from tasks.caption_rl.recipe import dataclass_from, get_recipe
from tasks.caption_rl.vlrm.recipe import VLRMConfig
from tasks.common.config import load_config
from tasks.common.data import MissingDataError

CONFIGS = Path(__file__).resolve().parents[1] / "configs" / "caption_rl"
DEFAULTS = defaults()


@pytest.mark.parametrize("path", sorted(CONFIGS.glob("*.yaml")), ids=lambda p: p.stem)
def test_every_config_loads_and_resolves(path):
    cfg = load_rl_config(str(path))
    e = resolve_eval(cfg["eval"])
    resolve_decoding(e["decoding"], name="eval.decoding")
    assert isinstance(get_recipe(cfg["recipe"]).options(cfg), (GTContrastiveConfig, VLRMConfig))
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
    from tasks.caption_rl.vlrm.recipe import WORLD_CLIP_WEIGHT
    from tasks.caption_rl.world import WORLD_OVERRIDES

    vl = load_config(DEFAULTS, None, [*WORLD_OVERRIDES, *get_recipe("vlrm").world_overrides])
    assert vl["optim"]["batch_size"] == 64 and vl["optim"]["micro_batch"] is None
    assert (vl["vlrm"]["sim"], vl["vlrm"]["clip_weight"]) == ("clip", WORLD_CLIP_WEIGHT)
    assert resolve_decoding(resolve_eval(vl["eval"])["decoding"]) == DECODING_PRESETS["vlrm_eval"]
    gt = load_config(DEFAULTS, None, [*WORLD_OVERRIDES, *get_recipe("gt_contrastive").world_overrides])
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


def test_unknown_recipe_names_are_refused():
    with pytest.raises(KeyError, match="unknown recipe 'ppo'"):
        get_recipe("ppo")
    with pytest.raises(KeyError, match="unknown recipe 'ppo'"):
        load_rl_config(None, ["recipe=ppo"])
    with pytest.raises(ValueError, match="data.rows"):
        load_rl_config(None, ["data.rows=pairs"])


def test_an_unknown_key_lists_the_valid_ones():
    from tasks.common.data import UserError

    with pytest.raises(UserError, match="valid keys here"):
        load_rl_config(None, ["gt.nope=1"])


def test_recipes_register_themselves_and_own_their_section():
    """Each recipe folder registers its class; the defaults, the loop options and the command lines take every
    registered recipe by name, with no list of names anywhere (a new recipe is one folder)."""
    from dataclasses import dataclass

    from tasks.caption_rl import recipe as R
    from tasks.caption_rl.world import ablations

    assert R.load_recipes() == ["gt_contrastive", "vlrm", "vlrm_retrieval"]
    assert all(get_recipe(n).name == n for n in R.list_recipes())
    assert {"gt", "vlrm"} <= set(defaults()) and set(ablations()) == {"none", "no_disc", "no_gt", "no_ref",
                                                                          "no_penalties"}

    @dataclass
    class FakeOptions:
        depth: int = 3

    @R.register_recipe("fake_recipe")
    class Fake(R.Recipe):
        section = "fake"
        ablations = {"shallow": ["fake.depth=1"]}

        @classmethod
        def defaults(cls):
            return R.plain_section(FakeOptions())

        @classmethod
        def negatives(cls, cfg):
            return (2,)

        @classmethod
        def options(cls, cfg):
            return R.dataclass_from(FakeOptions, cfg["fake"])

    try:
        cfg = load_rl_config(None, ["recipe=fake_recipe", "fake.depth=7"])
        assert get_recipe(cfg["recipe"]).options(cfg) == FakeOptions(7)
        assert loop_config("fake_recipe", cfg).negatives == (2,) and not loop_config("fake_recipe", cfg).need_captions
        assert ablations()["shallow"] == ["fake.depth=1"]
    finally:
        R._RECIPES.pop("fake_recipe", None)
