"""Caption RL in the embedded world, on CPU in minutes, with the papers' presets and the ablation switches.

``python -m tasks.caption_rl.world --recipe gt_contrastive|vlrm|vlrm_retrieval [--ablation NAME] [--quick]
[key.sub=value ...]`` (``--out-dir output/world_caption_rl/<recipe>-<ablation>``; each recipe's world settings and
ablations are its own: ``Recipe.world_overrides``, ``Recipe.ablations``):

1. world ``train`` images and captions; a tiny ClipCap trained on them with the world *policy* CLIP
   (:func:`tasks.captioning.world_demo.train_world_captioner`, cached in ``<out>/captioner``; ``--captioner PATH``
   reuses one, e.g. the caption demo's ``output/world_caption/captioner/ckpt-latest.pt``);
2. what the recipe needs (:meth:`.recipe.Recipe.needs`); ``gt_contrastive``: mined hard negatives, one row per
   ground-truth caption (``data.rows=caption``) and discriminator pre-training (:mod:`.gt.pretrain_disc`) as the
   first stage;
3. RL with the recipe and the world *reward* CLIP; the tiny LM stays frozen (``captioner.train_lm=true``: trained
   too), the mapper is trained;
4. before / after on a clean held-out split (``val``) with the recipe's evaluation preset (``chaffin``: beam 5, no
   repeated 3-grams, Self-BLEU-5; ``vlrm``: beam 5, no repeated 2-grams, 4-60 tokens), CLIP Recall (t2i) and i2t
   recall with the world *filter* CLIP (neither policy nor reward), Self-BLEU, vocabulary, length, CIDEr / BLEU-4;
   ``results.json`` and ``results.md``.

Paper presets used as they are: the decoding presets of both recipes (rollouts, greedy baseline, evaluation), one
row per caption, discriminator warm start, the GT term, the baseline-free contrastive reward (``gt.baseline=none``),
VLRM's A2C settings. Where the world differs (tiny models, batches of 64 instead of thousands, no BLIP-2 ITM nor
ViT-g / ViT-bigG here):

* ``vlrm.sim=clip`` with ``clip_weight`` = :data:`.vlrm.recipe.WORLD_CLIP_WEIGHT`, measured by :mod:`.vlrm.calibrate`
  (the world reward CLIP's within-image spread over sampled captions matched to the ITM spread of the paper's
  Tables 4-5);
  ``Phi`` (VLRM-RS) from the reward CLIP; evaluation with the world filter CLIP;
* ``optim.value_lr=1e-3``: at lr 1e-4 the value head takes ~100 steps to learn the mean return, and until then the
  advantages are its errors;
* the reference is the frozen initial *captioner* (the tiny LM never saw text without an image prefix);
* mapper learning rate 1e-4, smaller discriminator and value head, 100 discriminator pre-training steps.

Ablations (the recipe's own): ``no_disc`` (no discriminator term), ``no_gt`` (``gt.gt_term=none``), ``no_ref``
(VLRM without the reference term), ``no_penalties`` (VLRM without bad-phrase / repeat / no-EOS penalties).
"""
from __future__ import annotations

import argparse
import json
import logging
import time
from pathlib import Path
from typing import Any, Callable, Sequence

import torch

import rlcf

from ..captioning.world_demo import load_world_model, train_world_captioner, world_split
from ..common.config import dump_config, load_config
from .config import defaults, loop_config, prepare_captioner
from .data import RLData, mine_hard_negatives
from .decoding import resolve_decoding
from .evaluate import EvalSet, make_evaluator
from .loop import train_rl
from .presets import resolve_eval
from .recipe import Setup, get_recipe, load_recipes

logger = logging.getLogger(__name__)

__all__ = ["WORLD_OVERRIDES", "ablations", "embed_images", "main"]

#: the world's sizes and settings of every recipe (each recipe adds its own: ``Recipe.world_overrides``)
WORLD_OVERRIDES = ["captioner.max_new_tokens=20", "gt.disc_hidden=[128, 64]", "gt.disc_lr=1e-3",
                   "gt.disc_pretrain.steps=100", "gt.disc_pretrain.batch_size=64",
                   "vlrm.value_width=128", "vlrm.ref_mode=captioner", "optim.lr=1e-4",
                   "optim.value_lr=1e-3", "optim.batch_size=64", "optim.warmup=20", "optim.clip_grad=1.0",
                   "optim.log_every=10", "optim.save_every=100", "data.rows=caption"]


@torch.no_grad()
def embed_images(model: torch.nn.Module, preprocess: Callable, images: Sequence, bs: int = 256) -> torch.Tensor:
    """``[N, D]`` float32 CPU image embeddings (unnormalised) of PIL ``images``."""
    dev = next(model.parameters()).device
    return rlcf.encode_batched(lambda chunk: model.encode_image(torch.stack([preprocess(im) for im in chunk]).to(dev)).cpu(),
                          list(images), bs, normalize=False)


def _claim_out_dir(out: Path, cfg: dict) -> None:
    """Write ``cfg`` to ``out/config.yaml``; a folder holding a run of another configuration is an error (it would
    resume that run's checkpoint, or mix its captioner and logs in)."""
    import yaml

    path = out / "config.yaml"
    if path.is_file() and yaml.safe_load(path.read_text()) != yaml.safe_load(yaml.safe_dump(cfg, sort_keys=False)):
        raise ValueError(f"{out} holds a run with another configuration: pass another --out-dir or remove it")
    out.mkdir(parents=True, exist_ok=True)
    dump_config(cfg, path)


def ablations() -> dict[str, list[str]]:
    """Every ablation of the registered recipes (``none``: none), with its overrides."""
    out: dict[str, list[str]] = {"none": []}
    for name in load_recipes():
        out.update(get_recipe(name).ablations)
    return out


def _ablation_overrides(recipe: str, ablation: str) -> list[str]:
    known = ablations()
    if ablation not in known:
        raise KeyError(f"unknown ablation '{ablation}'; choose from {sorted(known)}")
    own = {"none": [], **get_recipe(recipe).ablations}
    if ablation not in own:
        raise ValueError(f"ablation '{ablation}' does not apply to recipe '{recipe}'")
    return own[ablation]


def _markdown(res: dict) -> str:
    b, a = res["before"], res["after"]
    lines = [f"# Caption RL in the embedded world: {res['recipe']} ({res['ablation']})", "",
             f"{res['n_train']} training images ({res['n_rows']} training rows), {res['n_eval']} held-out "
             f"`{res['eval_split']}` images, evaluation preset `{res['eval_preset']}`, "
             f"{res['steps']} RL steps of {res['batch_size']} images, {res['seconds']:.0f} s on CPU.", "",
             "| metric | before RL | after RL |", "|---|---|---|"]
    for k in ("t2i/R@1", "t2i/R@5", "t2i/MRR", "i2t/R@1", "i2t/MRR", "CIDEr", "BLEU-4", "self_BLEU-4", "self_BLEU-5",
              "vocab_size", "mean_length"):
        if k in b and k in a:
            lines.append(f"| {k} | {b[k]:.3f} | {a[k]:.3f} |")
    lines += ["", "Examples (before / after):", ""]
    lines += [f"- \"{x}\" / \"{y}\"" for x, y in res["examples"]]
    lines += ["", f"Command: `{res['command']}`", ""]
    return "\n".join(lines)


def main(argv: Sequence[str] | None = None, world: Any = None) -> dict:
    """CLI (see the module docstring); ``world`` overrides the ``WorldConfig`` (tests: tiny split sizes)."""
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--recipe", choices=load_recipes(), default="gt_contrastive")
    ap.add_argument("--ablation", default="none", help=f"one of {sorted(ablations())} (the recipe's own)")
    ap.add_argument("--quick", action="store_true", help="small sizes (minutes on 1-2 CPU cores)")
    ap.add_argument("--out-dir", default=None)
    ap.add_argument("--data-root", default="data/world")
    ap.add_argument("--captioner", default=None, help="supervised world captioner to start from (else trained)")
    ap.add_argument("--n-train", type=int, default=None)
    ap.add_argument("--n-eval", type=int, default=None)
    ap.add_argument("--eval-split", default="val")
    ap.add_argument("--epochs", type=int, default=None, help="supervised epochs when the captioner is trained here")
    ap.add_argument("--steps", type=int, default=None)
    ap.add_argument("--policy-clip", default="world:policy")
    ap.add_argument("--reward-clip", default="world:reward")
    ap.add_argument("--eval-clip", default="world:filter")
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("overrides", nargs="*", help="key.sub=value overrides of tasks.caption_rl.train.DEFAULTS")
    args = ap.parse_args(argv)
    from tasks.common.cli import setup_logging

    setup_logging()   # the one logging set-up of every command line (python -m: the __main__ logger too)
    recipe = get_recipe(args.recipe)
    ablation = _ablation_overrides(args.recipe, args.ablation)
    torch.set_num_threads(args.threads)
    torch.manual_seed(args.seed)
    n_train = args.n_train or (2000 if args.quick else 8000)
    n_eval = args.n_eval or (200 if args.quick else 500)
    steps = args.steps or (150 if args.quick else 600)
    out = Path(args.out_dir or f"output/world_caption_rl/{args.recipe}-{args.ablation}{'-quick' if args.quick else ''}")
    cfg = load_config(defaults(), None, [*WORLD_OVERRIDES, *recipe.world_overrides, *ablation,
                                       f"optim.steps={steps}", f"run.seed={args.seed}", f"run.out_dir={out}",
                                       *args.overrides])
    cfg["recipe"] = args.recipe
    cfg["world_run"] = {"n_train": n_train, "n_eval": n_eval, "eval_split": args.eval_split,
                        "captioner": args.captioner, "epochs": args.epochs,
                        "models": [args.policy_clip, args.reward_clip, args.eval_clip]}
    _claim_out_dir(out, cfg)
    t0 = time.perf_counter()
    dev = torch.device("cpu")
    pclip, ppre, _ = load_world_model(args.policy_clip, dev)
    rclip, rpre, rtok = load_world_model(args.reward_clip, dev)
    eclip, epre, etok = load_world_model(args.eval_clip, dev)
    train = world_split("train", n_train, args.data_root, world=world)
    if args.captioner:
        from ..captioning.checkpoint import load_captioner

        captioner = load_captioner(args.captioner)
    else:
        captioner, _ = train_world_captioner(train, pclip, ppre, out / "captioner", args.epochs or (4 if args.quick
                                                                                                     else 6), args.seed)
    captioner.configure(max_new_tokens=cfg["captioner"]["max_new_tokens"])
    reward_feats = torch.nn.functional.normalize(embed_images(rclip, rpre, train.images), dim=-1)
    nb = None
    needs = recipe.needs(cfg, dev)
    if needs.extra_clips or needs.pixel_transform is not None:
        raise ValueError("the embedded-world run computes no extra image features: use vlrm.sim=clip and no vlrm.phi")
    if needs.neighbours:
        with torch.no_grad():
            keys = rclip.encode_text(rtok([c[0] for c in train.captions])).float()
        nb = mine_hard_negatives(reward_feats, keys, num=needs.neighbours)
    data = RLData(embed_images(pclip, ppre, train.images), reward_feats, train.captions, nb, train.ids)
    if needs.caption_rows:
        data = data.caption_rows()
    held = world_split(args.eval_split, n_eval, args.data_root, world=world)
    eval_set = EvalSet(embed_images(pclip, ppre, held.images), embed_images(eclip, epre, held.images), held.captions,
                       held.ids)
    captioner = prepare_captioner(captioner, cfg["captioner"], args.recipe)
    reward = rlcf.CLIPReward(rclip, rtok)
    trainer = recipe.from_config(cfg, Setup(cfg, data, captioner, reward, None, None, out, needs))
    e = resolve_eval(cfg["eval"])
    evaluate = make_evaluator(captioner, eval_set, eclip, etok, out, resolve_decoding(e["decoding"], name="eval"),
                              metric_options={"tokenizer": "simple", "meteor": False}, self_bleu_n=e["self_bleu_n"],
                              strip_periods=bool(e["strip_periods"]))
    before = evaluate(0)
    lcfg = loop_config(args.recipe, cfg)
    train_rl(trainer, data, lcfg, out, evaluate=evaluate)
    evals = [json.loads(x) for x in (out / "eval_log.jsonl").read_text().splitlines()]
    after = [row for row in evals if row["step"] == lcfg.steps][-1]    # a rerun appends another step-0 entry
    caps0 = json.loads((out / "captions-step0.json").read_text())
    caps1 = json.loads((out / f"captions-step{lcfg.steps}.json").read_text())
    res = {"recipe": args.recipe, "ablation": args.ablation, "n_train": len(train), "n_rows": len(data),
           "n_eval": len(held), "eval_preset": e["preset"],
           "eval_split": args.eval_split, "steps": lcfg.steps, "batch_size": lcfg.batch_size,
           "before": before, "after": after, "seconds": time.perf_counter() - t0,
           "examples": [(x["caption"], y["caption"]) for x, y in zip(caps0[:6], caps1[:6])],
           "models": {"policy": args.policy_clip, "reward": args.reward_clip, "eval": args.eval_clip},
           "command": "python -m tasks.caption_rl.world " + " ".join(argv if argv is not None
                                                                      else __import__("sys").argv[1:])}
    (out / "results.json").write_text(json.dumps(res, indent=2, default=str))
    (out / "results.md").write_text(_markdown(res))
    logger.info("world caption RL %s/%s: t2i R@1 %.3f -> %.3f, vocab %d -> %d (%s)", args.recipe, args.ablation,
                before["t2i/R@1"], after["t2i/R@1"], before["vocab_size"], after["vocab_size"], out / "results.md")
    return res


if __name__ == "__main__":
    from tasks.common.cli import run_main

    run_main(main)
