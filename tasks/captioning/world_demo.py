"""Caption TTA end to end in the embedded world, on CPU in minutes.

``python -m tasks.captioning.world_demo --quick`` (``--out-dir output/world_caption``):

1. world ``train`` images and captions (the procedural world of :mod:`tasks.world`);
2. a ClipCap-style captioner trained on them: the world *policy* CLIP's image embedding -> transformer
   mapper -> a tiny OPT (``OPTConfig``, 2 layers, width 64) with a word-level tokenizer built from
   the training captions. No pretrained LM this small exists, so the LM is randomly initialised and
   trained together with the mapper (in the real setting OPT-125m is pretrained and frozen);
3. RLCF test-time adaptation on a shifted split (default ``rendition``: textures, pixel art,
   cartoons, false colours) with the world *reward* CLIP: K beams, CLIPScore reward, mean-of-K
   baseline, only the mapper adapts (the LM is frozen at test time), reset per image;
4. metrics before (5-beam caption of the unadapted captioner) and after TTA: CIDEr, BLEU-4,
   CLIPScore / RefCLIPScore (the world *filter* CLIP, neither the policy nor the reward), vocabulary
   size, Self-BLEU; ``results.json`` / ``results.md`` with example captions.

The TTA learning rate of the tiny mapper is chosen in the run itself, by CIDEr after TTA on the world's
``dev`` split (``--lr-grid``), never on the evaluation images (``--lr`` fixes it instead); the
official 2e-6 is for a pretrained 8-layer, 768-wide mapper.
"""
from __future__ import annotations

import argparse
import json
import logging
import shutil
import sys
import time
from pathlib import Path
from typing import Any, Callable, Sequence

import torch
from PIL import Image

import rlcf
from rlcf.reward import encode_batched

from ..common.runner import read_records, run
from .checkpoint import load_captioner, tiny_captioner
from .data import CaptionItem
from .features import TrainingSet
from .metrics import ClipScorer
from .policy import CaptionPolicy
from .train import TrainConfig, train_captioner
from .task import CaptionTask

logger = logging.getLogger(__name__)

__all__ = ["WorldSplit", "world_split", "load_world_model", "main"]


class WorldSplit:
    """``n`` samples of a world split: PIL images, caption lists and ids."""

    def __init__(self, images: list[Image.Image], captions: list[list[str]], ids: list[str]) -> None:
        self.images, self.captions, self.ids = images, captions, ids

    def __len__(self) -> int:
        return len(self.images)


def world_split(split: str, n: int, data_root: str | Path = "data/world", offset: int = 0,
                world: Any = None) -> WorldSplit:
    """Samples ``offset .. offset + n`` of world split ``split`` (materialised by :mod:`tasks.world.splits`
    on first use; ``world``: a ``WorldConfig``, default the standard world)."""
    from ..world.splits import build_world_dataset

    ds = build_world_dataset(split, root=data_root, world=world)
    idx = range(offset, min(len(ds), offset + n))
    return WorldSplit([ds.load(i) for i in idx], [list(ds.captions[i]) for i in idx], [ds.sample_id(i) for i in idx])


def load_world_model(spec: str, device: torch.device, data_root: str | Path = "data/world", world: Any = None,
                     model_root: str | Path = "pretrained/world"):
    """``world:<policy|reward|filter>`` (the world's CLIPs, trained by :mod:`tasks.world.models` on first
    use and cached under ``model_root``), or an open_clip architecture JSON with weights
    ``CONFIG.json=WEIGHTS.pt`` (``CONFIG.json`` alone: random weights, for tests)."""
    if spec.startswith("world:"):
        from ..world.models import load_world_clip

        return load_world_clip(spec.split(":", 1)[1], root=model_root, device=str(device), data_root=data_root,
                               world=world)
    from ..common.clip import load_clip

    config, _, weights = spec.partition("=")
    return load_clip(Path(config).stem, weights or None, device=device, config_file=config)


@torch.no_grad()
def _embed(model: torch.nn.Module, preprocess: Callable, images: Sequence[Image.Image], bs: int = 256) -> torch.Tensor:
    dev = next(model.parameters()).device
    return encode_batched(lambda chunk: model.encode_image(torch.stack([preprocess(im) for im in chunk]).to(dev)).cpu(),
                          list(images), bs, normalize=False)


def train_world_captioner(train: WorldSplit, policy_clip, preprocess, out_dir: Path, epochs: int, seed: int = 0):
    """Tiny ClipCap on world ``train``: mapper and randomly initialised tiny OPT trained together."""
    feats = _embed(policy_clip, preprocess, train.images)
    caps = [c for cs in train.captions for c in cs]
    data = TrainingSet(feats, caps, torch.tensor([i for i, cs in enumerate(train.captions) for _ in cs]))
    cap = tiny_captioner(caps, prefix_dim=feats.shape[1], hidden=64, lm_layers=2, heads=4, prefix_length=8,
                         clip_length=8, mapper_layers=2, seed=seed, max_new_tokens=20)
    cfg = TrainConfig(epochs=epochs, lr=1e-3, warmup=100, batch_size=64, seed=seed, save_every=10 ** 9,
                      keep_epochs=1, log_every=50)
    t0 = time.perf_counter()
    losses = train_captioner(cap, data, cfg, out_dir, resume=True)
    logger.info("captioner trained: %d steps, loss %.3f -> %.3f, %.0fs", len(losses), losses[0] if losses else 0,
                losses[-1] if losses else 0, time.perf_counter() - t0)
    return load_captioner(out_dir / "ckpt-latest.pt"), {"steps": len(losses), "seconds": time.perf_counter() - t0,
                                                        "first_loss": losses[0] if losses else None,
                                                        "final_loss": losses[-1] if losses else None}


def _tta(captioner, pclip, ppre, reward, scorer, data: WorldSplit, adapt: dict, out: Path, desc: str,
         tokenizer: str = "auto") -> dict:
    """RLCF caption TTA on ``data`` through the runner (records + summary in ``out``)."""
    items = [CaptionItem(i, i, caps) for i, caps in zip(data.ids, data.captions)]
    method = rlcf.create_method("rlcf", CaptionPolicy(captioner, pclip), reward, **adapt)
    task = CaptionTask(method, items, lambda i: ppre(data.images[i]), scorer, zero_shot=True,
                       metric_options={"tokenizer": tokenizer, "meteor": False, "spice": False})
    # one process, whatever the launcher: this demo trains its captioner inline (the main job calls it on rank 0)
    summary = run(task, out, workers=0, desc=desc, shard=False)
    records = sorted(read_records(out).values(), key=lambda r: r["index"])
    return {"summary": summary, "records": records, "items": items}


def _markdown(res: dict) -> str:
    m = res["metrics"]
    sweep = ", ".join(f"{k}: {v:.1f}" for k, v in res["dev_sweep"].items()) or "given"
    if res["dev_cider_before_tta"] is not None:
        sweep += f"; before TTA {res['dev_cider_before_tta']:.1f}"
    setup = (f"{res['n_test']} test images; captioner trained on {res['n_train']} images; RLCF K={res['adapt']['k']}, "
             f"{res['adapt']['steps']} steps, lr {res['adapt']['lr']:g} (chosen on dev by CIDEr after TTA: {sweep}); "
             f"metrics x100 ({m.get('tokenizer', '?')} tokenizer).")
    lines = [f"# Caption TTA in the embedded world: {res['train_split']} -> {res['test_split']}", "", setup, "",
             "| metric | before TTA | after TTA |", "|---|---|---|"]
    for k in ("CIDEr", "BLEU-4", "ROUGE-L", "METEOR", "CLIPScore", "RefCLIPScore", "vocab_size", "self_BLEU-4",
              "mean_length"):
        if k in m and f"zeroshot/{k}" in m:
            lines.append(f"| {k} | {m[f'zeroshot/{k}']:.2f} | {m[k]:.2f} |")
    lines += ["", "Examples (reference / before / after):", ""]
    for ex in res["examples"]:
        lines.append(f"- `{ex['id']}`: ref \"{ex['reference']}\" / before \"{ex['before']}\" / after \"{ex['after']}\"")
    lines += ["", f"Command: `{res['command']}`", ""]
    return "\n".join(lines)


def main(argv: Sequence[str] | None = None, world: Any = None) -> dict:
    """CLI (see module docstring); ``world`` overrides the ``WorldConfig`` (tests use tiny split sizes)."""
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--quick", action="store_true", help="small sizes (a few minutes on 1 CPU core)")
    ap.add_argument("--out-dir", default="output/world_caption")
    ap.add_argument("--data-root", default="data/world", help="world image cache (tasks.world.splits)")
    ap.add_argument("--model-root", default="pretrained/world", help="world CLIP checkpoints (tasks.world.models)")
    ap.add_argument("--train-split", default="train")
    ap.add_argument("--test-split", default="rendition")
    ap.add_argument("--n-train", type=int, default=None)
    ap.add_argument("--n-test", type=int, default=None)
    ap.add_argument("--n-dev", type=int, default=None, help="dev images of the lr sweep")
    ap.add_argument("--epochs", type=int, default=None)
    ap.add_argument("--policy-clip", default="world:policy")
    ap.add_argument("--reward-clip", default="world:reward")
    ap.add_argument("--eval-clip", default="world:filter")
    ap.add_argument("--k", type=int, default=10)
    ap.add_argument("--steps", type=int, default=4)
    ap.add_argument("--lr", type=float, default=None, help="TTA lr; default: best dev CIDEr over --lr-grid")
    ap.add_argument("--lr-grid", default="1e-4,3e-4,1e-3")
    ap.add_argument("--tokenizer", choices=["auto", "ptb", "simple"], default="auto", help="caption metrics' tokenizer")
    ap.add_argument("--threads", type=int, default=1, help="torch threads (tiny models: 1 is fastest)")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--resume", action="store_true", help="reuse the captioner and TTA records in --out-dir")
    ap.add_argument("--verbose", action="store_true", help="third-party INFO logs too")
    args = ap.parse_args(argv)
    from ..common.cli import setup_logging
    from ..common.preflight import require_packages

    setup_logging(args.verbose)   # the one logging set-up of every command line (python -m: __main__ too)
    require_packages({"pycocoevalcap": "the caption metrics"})
    torch.set_num_threads(args.threads)
    n_train = args.n_train or (2000 if args.quick else 8000)
    n_test = args.n_test or (40 if args.quick else 300)
    n_dev = args.n_dev or (24 if args.quick else 96)
    epochs = args.epochs or (4 if args.quick else 6)
    out = Path(args.out_dir)
    if not args.resume:   # a fresh run: stale captioner checkpoints / TTA records would be reused otherwise
        for sub in ["captioner", "dev", f"tta_{args.test_split}"]:
            shutil.rmtree(out / sub, ignore_errors=True)
    dev = torch.device("cpu")
    t0 = time.perf_counter()
    pclip, ppre, _ = load_world_model(args.policy_clip, dev, args.data_root, world, args.model_root)
    rclip, _, rtok = load_world_model(args.reward_clip, dev, args.data_root, world, args.model_root)
    eclip, _, etok = load_world_model(args.eval_clip, dev, args.data_root, world, args.model_root)
    reward, scorer = rlcf.CLIPReward(rclip, rtok), ClipScorer(eclip, etok)
    train = world_split(args.train_split, n_train, args.data_root, world=world)
    captioner, train_info = train_world_captioner(train, pclip, ppre, out / "captioner", epochs, args.seed)
    adapt = {"steps": args.steps, "lr": args.lr, "weight_decay": 0.0, "eps": 1e-6, "k": args.k, "selection": 1.0}
    sweep: dict[str, float] = {}
    dev_before = None
    if args.lr is None:   # choose the lr on dev (never on the test split)
        dev_data = world_split("dev", n_dev, args.data_root, world=world)
        for lr in [float(x) for x in args.lr_grid.split(",")]:
            r = _tta(captioner, pclip, ppre, reward, scorer, dev_data, {**adapt, "lr": lr}, out / "dev" / f"lr{lr:g}",
                     f"dev lr {lr:g}", args.tokenizer)
            sweep[f"{lr:g}"] = r["summary"]["metrics"].get("CIDEr", 0.0)
            dev_before = r["summary"]["metrics"].get("zeroshot/CIDEr", 0.0)
        adapt["lr"] = float(max(sweep, key=lambda k: (sweep[k], -float(k))))
        logger.info("dev sweep (CIDEr after TTA): %s -> lr %g", sweep, adapt["lr"])
    test = world_split(args.test_split, n_test, args.data_root, world=world)
    r = _tta(captioner, pclip, ppre, reward, scorer, test, adapt, out / f"tta_{args.test_split}", "world caption TTA",
             args.tokenizer)
    records, items = r["records"], r["items"]
    changed = [x for x in records if x["caption"] != x["caption_zeroshot"]]
    same = [x for x in records if x["caption"] == x["caption_zeroshot"]]
    examples = [{"id": x["id"], "reference": items[x["index"]].references[0], "before": x["caption_zeroshot"],
                 "after": x["caption"]} for x in (changed + same)[:6]]
    res: dict[str, Any] = {
        "train_split": args.train_split, "test_split": args.test_split, "n_train": len(train), "n_test": len(test),
        "adapt": adapt, "dev_sweep": sweep, "dev_cider_before_tta": dev_before,
        "captioner": {**captioner.config.to_dict(), "lm_layers": captioner.lm.config.num_hidden_layers,
                      "lm_width": captioner.lm.config.hidden_size, **train_info},
        "models": {"policy": args.policy_clip, "reward": args.reward_clip, "eval": args.eval_clip},
        "metrics": r["summary"]["metrics"], "changed_captions": len(changed), "examples": examples,
        "seconds": time.perf_counter() - t0,
        "command": "python -m tasks.captioning.world_demo " + " ".join(sys.argv[1:] if argv is None else argv)}
    (out / "results.json").write_text(json.dumps(res, indent=2, default=str))
    (out / "results.md").write_text(_markdown(res))
    m = res["metrics"]
    logger.info("world caption demo: CIDEr %.2f -> %.2f, CLIPScore %.2f -> %.2f (%s)", m.get("zeroshot/CIDEr", 0.0),
                m.get("CIDEr", 0.0), m.get("zeroshot/CLIPScore", 0.0), m.get("CLIPScore", 0.0), out / "results.md")
    return res


if __name__ == "__main__":
    from tasks.common.cli import run_main

    run_main(main)
