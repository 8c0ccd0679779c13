"""Caption RL end to end on tiny random models: one training step of each recipe changes the trainable
parameters and nothing frozen; the value head is trained by the value loss only; training resumes exactly."""
from __future__ import annotations

import pytest
import torch

import rlcf
from tasks.caption_rl.data import RLData, mine_hard_negatives
from tasks.caption_rl.decoding import DecodingConfig
from tasks.caption_rl.gt.recipe import GTContrastiveConfig, GTContrastiveRecipe
from tasks.caption_rl.loop import LoopConfig, make_optimizer, train_rl, train_step
from tasks.caption_rl.lora import add_lora
from tasks.caption_rl.vlrm.recipe import VLRMConfig, VLRMRecipe
from tasks.captioning.checkpoint import load_captioner, tiny_captioner

CAPTIONS = ["a red circle on a blue background", "a green square", "two yellow stars in the picture",
            "a photo of a small blue triangle", "an image of a red square", "three green circles"]


@pytest.fixture(autouse=True)
def _one_thread():
    torch.set_num_threads(1)


@pytest.fixture
def reward(reward_clip):
    model, _, tok = reward_clip
    return rlcf.CLIPReward(model, tok)


def _captioner(train_lm: bool = False):
    return tiny_captioner(CAPTIONS, prefix_dim=16, hidden=32, heads=2, seed=0, train_lm=train_lm, max_new_tokens=6)


def _data(n: int = 6) -> RLData:
    g = torch.Generator().manual_seed(1)
    reward_feats = torch.nn.functional.normalize(torch.randn(n, 48, generator=g), dim=-1)
    nb = mine_hard_negatives(reward_feats, reward_feats, num=5)
    return RLData(torch.randn(n, 16, generator=g), reward_feats, [[c, c.upper()] for c in CAPTIONS[:n]], nb)


#: tiny-model decodings: the papers' settings with the captioner's own length limit (6 tokens)
BEAM2 = DecodingConfig(mode="beam", num_beams=2, no_repeat_ngram_size=3)
GREEDY = DecodingConfig(mode="greedy")


def _gt_config(**kw) -> GTContrastiveConfig:
    return GTContrastiveConfig(policy_decoding=BEAM2, baseline_decoding=GREEDY, **kw)


def _snapshot(*modules):
    return [{k: v.detach().clone() for k, v in m.state_dict().items()} for m in modules]


def _changed(before: dict, module) -> set[str]:
    return {k for k, v in module.state_dict().items() if not torch.equal(v, before[k])}


def test_gt_contrastive_step_updates_mapper_and_discriminator_only(reward):
    cap = _captioner()
    recipe = GTContrastiveRecipe(cap, reward, _gt_config(disc_hidden=(16,), disc_lr=1e-2))
    data = _data()
    batch = data.batch(torch.arange(4), negatives=(4, 5))
    assert batch.negative_feats.shape == (8, 48)
    mapper0, lm0, clip0, disc0 = _snapshot(cap.mapper, cap.lm, reward.model, recipe.disc)
    opt = make_optimizer(recipe.parameter_groups(), LoopConfig(lr=1e-2))
    stats = train_step(recipe, batch, opt, clip_grad=1.0)
    assert _changed(mapper0, cap.mapper) == set(mapper0)            # every mapper tensor moved
    assert not _changed(lm0, cap.lm) and not _changed(clip0, reward.model)   # frozen LM and reward CLIP
    assert _changed(disc0, recipe.disc)                             # the discriminator trained online
    for key in ("reward_policy", "reward_gt", "disc_acc", "logp_gt", "grad_norm/0"):
        assert key in stats, key
    assert stats["grad_norm/0"] > 0
    # the logged means obey the reward formula r = 0.94 contrastive + 0.06 D (means are linear)
    for who, disc in (("policy", "disc_p_policy"), ("gt", "disc_p_gt")):
        assert stats[f"reward_{who}"] == pytest.approx(0.94 * stats[f"contrastive_{who}"] + 0.06 * stats[disc],
                                                       abs=1e-6)
    assert stats["disc_acc"] in {k / 8 for k in range(9)}                 # 8 pairs: 4 real + 4 fake


def test_gt_term_uses_the_ground_truth_rewards_and_logprobs(reward):
    """The second loss term is the GT captions' own reward-weighted teacher forcing, not the policy term again
    (the published code's bug)."""
    from tasks.caption_rl.recipe import encode_reward_texts
    from tasks.caption_rl.contrastive import bidirectional_contrastive_reward, cosine_matrix
    from tasks.caption_rl.rollout import forward_tokens, generate_rollout, rollout_from_texts, sequence_mean_logprob

    cap = _captioner()
    batch = _data().batch(torch.arange(3), negatives=(4,))
    l1 = GTContrastiveRecipe(cap, reward, _gt_config(discriminator=False)).step(batch)
    l0 = GTContrastiveRecipe(cap, reward, _gt_config(discriminator=False, gt_term="none")).step(batch)
    lpub = GTContrastiveRecipe(cap, reward, _gt_config(discriminator=False, gt_term="public")).step(batch)
    emb = batch.prefix_feats
    policy = generate_rollout(cap, emb, "beam", num_beams=2, no_repeat_ngram_size=3)
    greedy = generate_rollout(cap, emb, "greedy")
    assert l0.samples == l1.samples == lpub.samples
    assert policy.texts == l1.samples
    feats = encode_reward_texts(reward, policy.texts + batch.captions + greedy.texts, strip_periods=True)
    pool = torch.cat([batch.reward_feats, batch.negative_feats])
    r = 0.94 * bidirectional_contrastive_reward(cosine_matrix(feats, pool), torch.arange(6), torch.arange(3).repeat(2))
    with torch.no_grad():
        gt = rollout_from_texts(cap, batch.captions, 60)
        lp_gt = sequence_mean_logprob(forward_tokens(cap, emb, gt.ids, gt.mask)[0], gt.token_mask)
        lp_pol = sequence_mean_logprob(forward_tokens(cap, emb, policy.ids, policy.mask)[0], policy.token_mask)
    want_policy = -(r[:3] * lp_pol).mean()
    want_gt = -(r[3:] * lp_gt).mean()
    torch.testing.assert_close(l0.losses[0][0].detach(), want_policy)
    torch.testing.assert_close(l1.losses[0][0].detach(), want_policy + want_gt)
    assert not torch.allclose(want_gt, want_policy)
    # the public code: "policy_loss = policy_loss - mean(rewards_policy * mean(logprob_policy))", the policy term twice
    torch.testing.assert_close(lpub.losses[0][0].detach(), 2 * want_policy)
    with pytest.raises(ValueError, match="gt_term"):
        _gt_config(gt_term=False)


@pytest.mark.parametrize("lora", [False, True])
def test_vlrm_step_updates_policy_and_value_not_frozen(reward, lora):
    cap = _captioner(train_lm=False)
    if lora:
        cap.lm = add_lora(cap.lm, ("q_proj", "v_proj"), adapters=("policy", "value"), r=2, alpha=4)
    cfg = VLRMConfig(value_width=16, value_adapter=lora, penalties={"bad_phrases_file": None})
    recipe = VLRMRecipe(cap, reward, cfg)
    batch = _data().batch(torch.arange(4), need_captions=False)
    groups = recipe.parameter_groups()
    assert not {id(p) for p in groups["policy"]} & {id(p) for p in groups["value"]}
    mapper0, lm0, clip0, ref0, head0 = _snapshot(cap.mapper, cap.lm, reward.model, recipe.reference, recipe.value_head)
    opt = make_optimizer(groups, LoopConfig(lr=1e-2, warmup=0))
    stats = train_step(recipe, batch, opt, clip_grad=1.0)
    assert _changed(mapper0, cap.mapper)
    assert _changed(head0, recipe.value_head)
    assert not _changed(clip0, reward.model) and not _changed(ref0, recipe.reference)
    changed_lm = _changed(lm0, cap.lm)
    if lora:
        assert changed_lm and all(".lora_" in k for k in changed_lm)   # adapters only, base LM frozen
        assert any("lora_B.policy" in k for k in changed_lm) and any("lora_B.value" in k for k in changed_lm)
    else:
        assert not changed_lm
    for key in ("policy_loss", "value_loss", "sim", "ref", "noeos", "bad_per_caption", "repeat_per_caption"):
        assert key in stats, key
    assert stats["sim"] == stats["sim_clip"] and 0 <= stats["sim"] <= 10.0      # 10 * max(cos, 0)
    assert stats["noeos"] in {k / 4 for k in range(5)} and stats["ref"] < 0       # 4 captions; mean log-probs
    assert 1 <= stats["tokens"] <= 6                                            # captioner max_new_tokens=6


def test_vlrm_value_head_gradient_comes_only_from_the_value_loss(reward):
    cap = _captioner(train_lm=True)
    recipe = VLRMRecipe(cap, reward, VLRMConfig(value_width=16, retrieval=True))
    assert recipe.reference is None                                 # RS: no ref term
    res = recipe.step(_data().batch(torch.arange(4), need_captions=False))
    (lp, policy), (lv, value) = res.losses
    assert all(g is None for g in torch.autograd.grad(lp, value, allow_unused=True, retain_graph=True))
    assert all(g is None for g in torch.autograd.grad(lv, policy, allow_unused=True, retain_graph=True))
    assert any(g is not None for g in torch.autograd.grad(lv, value, allow_unused=True, retain_graph=True))
    assert any(g is not None for g in torch.autograd.grad(lp, policy, allow_unused=True))
    # Phi is standardised over the 4 captions (unbiased std: sum Phi^2 = 3), so 0 < mean |Phi| <= sqrt(3 / 4)
    assert 0 < res.stats["phi_abs"] <= (3 / 4) ** 0.5 + 1e-6


def test_training_loop_resumes_exactly(reward, tmp_path):
    def run(out, steps):
        torch.manual_seed(0)
        cap = _captioner()
        recipe = VLRMRecipe(cap, reward, VLRMConfig(value_width=16))
        cfg = LoopConfig(steps=steps, batch_size=3, lr=1e-2, warmup=2, save_every=2, log_every=1,
                         need_captions=False)
        train_rl(recipe, _data(), cfg, out)
        return cap, recipe

    full, rf = run(tmp_path / "a", 3)
    run(tmp_path / "b", 2)
    part, rp = run(tmp_path / "b", 3)                                # resumes at step 2
    for a, b in zip(full.mapper.parameters(), part.mapper.parameters()):
        torch.testing.assert_close(a, b)
    for a, b in zip(rf.value_head.parameters(), rp.value_head.parameters()):
        torch.testing.assert_close(a, b)
    exported = load_captioner(tmp_path / "b" / "captioner-rl.pt")
    for a, b in zip(exported.mapper.parameters(), part.mapper.parameters()):
        torch.testing.assert_close(a, b)
    assert len((tmp_path / "b" / "train_log.jsonl").read_text().splitlines()) == 3


def test_training_loop_shows_progress_and_logs_the_first_step(reward, tmp_path, caplog, capsys, monkeypatch):
    """One bar over the steps (loss / lr / ETA, rank 0), a log line and a train_log.jsonl row at the first step and
    every ``log_every`` steps; after a resume the first logged step is the first one of that run."""
    import json
    import logging

    def run(steps, out="a"):
        torch.manual_seed(0)
        recipe = VLRMRecipe(_captioner(), reward, VLRMConfig(value_width=16))
        cfg = LoopConfig(steps=steps, batch_size=3, lr=1e-2, warmup=2, save_every=2, log_every=3, need_captions=False)
        with caplog.at_level(logging.INFO, logger="tasks"):
            train_rl(recipe, _data(), cfg, tmp_path / out)

    def logged() -> list[int]:
        lines = [r.getMessage() for r in caplog.records if r.name == "tasks.caption_rl.loop"]
        caplog.clear()
        return [int(m.split()[1].split("/")[0]) for m in lines if m.startswith("step ")]

    run(4)
    assert logged() == [1, 3, 4]
    err = capsys.readouterr().err
    assert "4/4" in err and "policy_loss=" in err and "lr=" in err
    rows = [json.loads(x) for x in (tmp_path / "a" / "train_log.jsonl").read_text().splitlines()]
    assert [r["step"] for r in rows] == [1, 3, 4]
    run(7)                                                        # resumes at step 4
    assert logged() == [5, 6, 7]
    monkeypatch.setenv("RANK", "1")                               # another torchrun rank: no bar, no log lines
    run(2, "c")
    assert logged() == [] and "2/2" not in capsys.readouterr().err
