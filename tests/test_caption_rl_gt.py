"""Ground-truth-guided recipe, paper presets: one training row per GT caption (an epoch visits each once),
discriminator pre-training as a first stage with save / reload, what trains (mapper, whole LM, or LoRA on the LM),
and Chaffin et al.'s Self-BLEU-5 against a hand computation."""
from __future__ import annotations

import math

import pytest
import torch

import rlcf
from tasks.caption_rl.recipe import StepResult
from tasks.caption_rl.config import defaults, prepare_captioner
from tasks.caption_rl.data import RLData, mine_hard_negatives
from tasks.caption_rl.decoding import DecodingConfig
from tasks.caption_rl.gt.discriminator import CLIPDiscriminator, load_discriminator, save_discriminator
from tasks.caption_rl.gt.recipe import GTContrastiveConfig, GTContrastiveRecipe
from tasks.caption_rl.loop import LoopConfig, make_optimizer, train_rl, train_step
from tasks.caption_rl.metrics import self_bleu_official, sentence_bleu
from tasks.caption_rl.gt.pretrain_disc import DiscPretrainConfig, pretrain_discriminator
from tasks.captioning.checkpoint import tiny_captioner

DEFAULTS = defaults()
CAPTIONS = ["a red circle on a blue background", "a green square", "two yellow stars in the picture",
            "a photo of a small blue triangle", "an image of a red square", "three green circles"]
REFS = [["a red circle", "a round red shape"], ["a green square", "green box", "a square"], ["two yellow stars"],
        ["a small blue triangle", "blue triangle"], ["a red square"], ["three green circles", "green circles"]]


@pytest.fixture(autouse=True)
def _one_thread():
    torch.set_num_threads(1)


@pytest.fixture
def reward(reward_clip):
    model, _, tok = reward_clip
    return rlcf.CLIPReward(model, tok)


def _captioner():
    return tiny_captioner(CAPTIONS + [r for rs in REFS for r in rs], prefix_dim=16, hidden=32, heads=2, seed=0,
                          max_new_tokens=6, train_lm=False)


def _data() -> RLData:
    g = torch.Generator().manual_seed(1)
    rf = torch.nn.functional.normalize(torch.randn(6, 48, generator=g), dim=-1)
    return RLData(torch.randn(6, 16, generator=g), rf, REFS, mine_hard_negatives(rf, rf, num=5))


def test_one_row_per_ground_truth_caption():
    data = _data().caption_rows()
    assert len(data) == 11 and data.num_images == 6
    b = data.batch(torch.arange(11), negatives=(4,))
    assert b.captions == [r for rs in REFS for r in rs]
    assert b.index.tolist() == [0, 0, 1, 1, 1, 2, 3, 3, 4, 5, 5]
    # the same image twice in a batch (official quirk): identical features, each with its own neighbours
    torch.testing.assert_close(b.reward_feats[0], b.reward_feats[1])
    torch.testing.assert_close(b.negative_feats[0], data.reward_feats[data.neighbours[0, 3]])
    with pytest.raises(ValueError, match="rows point to missing"):
        RLData(data.prefix_feats, data.reward_feats, REFS, rows=torch.tensor([[0, 2]]))


class _Recorder:
    """A recipe that trains nothing but records the captions of every batch."""

    def __init__(self, captioner):
        self.captioner, self.seen = captioner, []

    def parameter_groups(self):
        return {"policy": list(self.captioner.mapper.parameters())}

    def step(self, batch):
        self.seen += batch.captions
        loss = sum(p.sum() for p in self.captioner.mapper.parameters()) * 0.0
        return StepResult([(loss, self.parameter_groups()["policy"])])

    def state_dict(self):
        return {}

    def load_state_dict(self, state):
        pass


def test_an_epoch_visits_every_caption_once(tmp_path):
    from tasks.caption_rl.loop import _order

    rec = _Recorder(_captioner())
    data = _data().caption_rows()
    train_rl(rec, data, LoopConfig(steps=5, batch_size=2, log_every=1, save_every=100, clip_grad=None), tmp_path)
    flat = [r for rs in REFS for r in rs]
    # 11 rows, batches of 2: the epoch is the loop's seeded permutation of the rows, 5 full batches
    assert rec.seen == [flat[j] for j in _order(11, 0, 0)[:10].tolist()]
    assert len(set(rec.seen)) == 10


def test_discriminator_pretraining_save_and_reload(tmp_path, reward):
    cap = _captioner()
    data = _data().caption_rows()
    torch.manual_seed(0)
    disc = CLIPDiscriminator(48, (16,))
    before = [p.detach().clone() for p in disc.parameters()]
    hist = pretrain_discriminator(disc, cap, reward, data, DiscPretrainConfig(steps=40, batch_size=4),
                                  DecodingConfig(mode="beam", num_beams=2, no_repeat_ngram_size=3), lr=1e-2)
    assert len(hist) == 40 and all(not torch.equal(a, b) for a, b in zip(before, disc.parameters()))
    assert hist[-1]["loss"] < hist[0]["loss"] and hist[-1]["accuracy"] > 0.5
    path = tmp_path / "disc.pt"
    save_discriminator(disc, path, {"steps": 40})
    again = load_discriminator(path, 48, (16,))
    x, t = torch.randn(3, 48), torch.randn(3, 48)
    torch.testing.assert_close(again.human_prob(x, t), disc.human_prob(x, t))
    with pytest.raises(ValueError, match="gt.disc_hidden"):
        load_discriminator(path, 48, (512, 256))
    with pytest.raises(FileNotFoundError, match="pretrain_disc"):
        load_discriminator(tmp_path / "none.pt")
    # an official-style bare Sequential state dict (MLP = Linear, ReLU, Linear, ..., as WTF-RL's torch.load)
    torch.save(disc.net.state_dict(), tmp_path / "official")
    torch.testing.assert_close(load_discriminator(tmp_path / "official", 48, (16,)).human_prob(x, t),
                               disc.human_prob(x, t))
    # the recipe starts from the given discriminator (and checks its sizes)
    recipe = GTContrastiveRecipe(cap, reward, GTContrastiveConfig(disc_hidden=(16,)), discriminator=again)
    assert recipe.disc is again
    with pytest.raises(ValueError, match="widths"):
        GTContrastiveRecipe(cap, reward, GTContrastiveConfig(), discriminator=again)


def test_pretraining_stage_in_the_run_is_written_once_and_reused(tmp_path, reward):
    from tasks.caption_rl.gt.pretrain_disc import pretrained_discriminator
    from tasks.caption_rl.recipe import Setup

    cfg = {**DEFAULTS, "gt": {**DEFAULTS["gt"], "disc_hidden": [16], "disc_lr": 1e-2,
                              "decoding": {"policy": {**DEFAULTS["gt"]["decoding"]["policy"], "num_beams": 2,
                                                      "max_new_tokens": 6}},
                              "disc_pretrain": {**DEFAULTS["gt"]["disc_pretrain"], "steps": 3, "batch_size": 4}},
           "run": {**DEFAULTS["run"], "out_dir": str(tmp_path)}}
    s = Setup(cfg, _data().caption_rows(), _captioner(), reward, None, None, tmp_path)
    first = pretrained_discriminator(s, cfg)
    assert (tmp_path / "discriminator-pretrained.pt").is_file()
    blob = torch.load(tmp_path / "discriminator-pretrained.pt", weights_only=False)
    assert blob["meta"]["steps"] == 3
    second = pretrained_discriminator(s, cfg)                          # reused, not retrained
    for a, b in zip(first.parameters(), second.parameters()):
        torch.testing.assert_close(a, b)
    cfg["gt"] = {**cfg["gt"], "disc_checkpoint": str(tmp_path / "discriminator-pretrained.pt"),
                 "disc_pretrain": {**cfg["gt"]["disc_pretrain"], "steps": 0}}
    loaded = pretrained_discriminator(s, cfg)
    for a, b in zip(first.parameters(), loaded.parameters()):
        torch.testing.assert_close(a, b)


def _changed(before: dict, module) -> set[str]:
    return {k for k, v in module.state_dict().items() if k in before and not torch.equal(v, before[k])}


@pytest.mark.parametrize("what", ["mapper", "train_lm", "lora"])
def test_what_trains(reward, what):
    cap = _captioner()
    spec = {**DEFAULTS["captioner"], "train_lm": what == "train_lm",
            "lora": {**DEFAULTS["captioner"]["lora"], "enabled": what == "lora", "r": 2}}
    cap = prepare_captioner(cap, spec, "gt_contrastive")
    cfg = GTContrastiveConfig(policy_decoding=DecodingConfig(mode="beam", num_beams=2),
                              baseline_decoding=DecodingConfig(mode="greedy"), discriminator=False)
    recipe = GTContrastiveRecipe(cap, reward, cfg)
    lm0 = {k: v.detach().clone() for k, v in cap.lm.state_dict().items()}
    opt = make_optimizer(recipe.parameter_groups(), LoopConfig(lr=1e-2, warmup=0))
    train_step(recipe, _data().caption_rows().batch(torch.arange(4), negatives=(4, 5)), opt)
    changed = _changed(lm0, cap.lm)
    if what == "mapper":
        assert not changed
    elif what == "train_lm":
        assert cap.train_lm and len(changed) > 10 and not any(".lora_" in k for k in changed)
    else:
        assert changed and all(".lora_" in k and ".policy." in k for k in changed)
    with pytest.raises(ValueError, match="exclude each other"):
        prepare_captioner(_captioner(), {**spec, "train_lm": True, "lora": {**spec["lora"], "enabled": True}},
                          "gt_contrastive")


def test_sentence_bleu_by_hand():
    # hypothesis "a b c d" vs reference "a b c e f": p1 3/4, p2 2/3, p3 1/2, p4 0 -> 0.1/1 (method1), p5 no 5-gram
    # in the hypothesis -> 0/1 -> 0.1/1; brevity: c 4 <= r 5 -> exp(1 - 5/4)
    want = math.exp(1 - 5 / 4) * (3 / 4 * 2 / 3 * 1 / 2 * 0.1 * 0.1) ** (1 / 5)
    assert sentence_bleu([["a", "b", "c", "e", "f"]], ["a", "b", "c", "d"], n=5) == pytest.approx(want, rel=1e-12)
    assert sentence_bleu([["x"]], ["a", "b"], n=5) == 0.0                      # no unigram match at all
    # closest reference length, the shorter on a tie: refs of 3 and 5 tokens for a 4-token hypothesis -> r = 3
    assert sentence_bleu([["a", "b", "c"], ["a", "b", "c", "d", "e"]], ["a", "b", "c", "d"], n=1) == 1.0


def test_self_bleu5_by_hand():
    caps = ["a b c d e f.", "a, b c d e g", "x y z"]
    # caption 1 vs {2, 3}: clipped precisions 5/6, 4/5, 3/4, 2/3, 1/2, closest length 6 = its own -> BP 1;
    # caption 2 the same by symmetry; caption 3 matches no word -> 0 (punctuation removed first)
    one = (5 / 6 * 4 / 5 * 3 / 4 * 2 / 3 * 1 / 2) ** (1 / 5)
    assert self_bleu_official(caps) == pytest.approx(100 * (2 * one + 0) / 3, rel=1e-12)
    # official quirk: the FIRST max_captions captions (no shuffling)
    assert self_bleu_official(caps + ["q"] * 5, max_captions=3) == self_bleu_official(caps)
    assert self_bleu_official(["a b c"]) == 0.0


def test_chaffin_evaluation_strips_periods_before_clip(tiny_clip):
    from tasks.caption_rl.metrics import distinctiveness_metrics

    model, _, tok = tiny_clip
    feats = torch.nn.functional.normalize(torch.randn(3, 32, generator=torch.Generator().manual_seed(0)), dim=-1)
    dotted = ["a red circle.", "two stars. in a row", "a square"]
    got = distinctiveness_metrics(dotted, feats, model, tok, self_bleu_n=5, strip_periods=True)
    plain = distinctiveness_metrics([c.replace(".", "") for c in dotted], feats, model, tok)
    assert {k: got[k] for k in plain if k.startswith(("t2i", "i2t"))} == \
        {k: v for k, v in plain.items() if k.startswith(("t2i", "i2t"))}
    assert got["self_BLEU-5"] == self_bleu_official(dotted)


def test_hard_negatives_are_exact_and_never_the_image_itself():
    g = torch.Generator().manual_seed(7)
    img = torch.randn(9, 5, generator=g)
    keys = img + 0.1 * torch.randn(9, 5, generator=g)           # each image's own caption is its nearest key
    nb = mine_hard_negatives(img, keys, num=5, chunk=4)
    cos = torch.nn.functional.normalize(img, dim=-1) @ torch.nn.functional.normalize(keys, dim=-1).t()
    for i in range(9):
        order = [j for j in cos[i].argsort(descending=True).tolist() if j != i]
        assert nb[i].tolist() == order[:5]                      # brute force, self excluded
    assert not (nb == torch.arange(9)[:, None]).any()
