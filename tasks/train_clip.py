"""``rlcf train-clip``: train your own small CLIP on any image-caption data (:mod:`tasks.common.train_clip`).

    python -m tasks.train_clip --data my_list.csv --config MyCLIP.json --out pretrained/mine
    python -m tasks.train_clip --data my_images/ --config MyCLIP.json --label-aware --augment light --no-flip

``--data``: a list file (CSV / JSONL of ``path,caption[,caption...]``, :mod:`tasks.common.lists`) or a folder of
class folders (captions from the class names: ``"a photo of a <name>."``, and the labels known, so
``--label-aware`` can treat same-class pairs of a batch as positives, not negatives). ``--config``: an
open_clip architecture JSON. The result, ``<out>/<arch>.pt`` + ``<out>/<arch>.json``, loads with
``tasks.common.clip.load_clip(<arch>, "<out>/<arch>.pt", config_file="<out>/<arch>.json")`` (or
``model: {arch, pretrained, config_file}`` in any config).

The training state (model, AdamW, random streams, batch order) goes to ``<out>/<arch>-latest.pt`` every
``--save-every`` steps: a rerun of the same command, also after ``kill -9``, resumes from it and ends with the weights
of an uninterrupted run. Other settings in the same folder are refused in one line (``--restart`` moves the old files
aside into ``<out>/old-<date>/``). Log lines: the first step, every ``--log-every`` steps, ``resumed from ... at step
N`` and ``done``.
"""
from __future__ import annotations

import argparse
import json
import logging
from pathlib import Path
from typing import Sequence

import torch

from .common.augment import AUGMENTATIONS, PRESET_HELP
from .common.train_clip import (RESUME_HINT, TrainConfig, TrainConfigError, init_for_short_training,
                                load_training_data, rescale_text_tower, save_clip, tokens_for, train_clip)

logger = logging.getLogger(__name__)

__all__ = ["main"]


def _parser() -> argparse.ArgumentParser:
    from .common.cli import HelpFormatter

    d = TrainConfig()
    presets = "\n".join(f"  {k:6s} {v}" for k, v in PRESET_HELP.items())
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=HelpFormatter,
                                 epilog=f"augmentation presets (--augment):\n{presets}\n\nCheckpoints: <out>/<arch>-latest.pt "
                                        "every --save-every steps; a rerun resumes from it (also after kill -9) and "
                                        "ends as an uninterrupted run would.")
    ap.add_argument("--data", required=True, help="list file (CSV / JSONL: path,caption[,...]) or folder of class folders")
    ap.add_argument("--config", required=True, help="open_clip architecture JSON (its file name is the model name)")
    ap.add_argument("--out", default="pretrained/mine", help="output folder")
    ap.add_argument("--steps", type=int, default=d.steps, help="training steps")
    ap.add_argument("--batch-size", type=int, default=d.batch_size, help="images per step")
    ap.add_argument("--lr", type=float, default=d.lr, help="AdamW peak learning rate (linear warm-up, cosine decay)")
    ap.add_argument("--weight-decay", type=float, default=d.weight_decay, help="AdamW weight decay (matrices only)")
    ap.add_argument("--warmup", type=int, default=d.warmup, help="linear warm-up steps")
    ap.add_argument("--augment", default="light", choices=list(AUGMENTATIONS),
                    help="augmentation preset (below); none = clean images only")
    ap.add_argument("--augment-p", type=float, default=d.augment_p, help="fraction of each batch augmented")
    ap.add_argument("--augment-from", type=int, default=d.augment_from, help="clean images before this step")
    ap.add_argument("--crop-scale", type=float, nargs=2, default=list(d.crop_scale), metavar=("MIN", "MAX"),
                    help="area range of the presets' random resized crop (fraction of the image)")
    ap.add_argument("--no-flip", action="store_true", help="no horizontal flips (text, handwriting)")
    ap.add_argument("--first-caption-p", type=float, default=d.first_caption_p,
                    help="probability of an image's first caption (else one of the others, uniformly)")
    ap.add_argument("--label-aware", action="store_true", help="same-class pairs are positives (needs labels: a "
                    "folder of class folders)")
    ap.add_argument("--short-init", action="store_true",
                    help="init_for_short_training (as the world's models): ResNet bn3 scales 1, token embeddings std 1 "
                         "for training; afterwards the text tower is rescaled exactly to CLIP's token std 0.02 "
                         "(rescale_text_tower), so that prompt-tuning lrs mean what they mean for CLIP")
    ap.add_argument("--seed", type=int, default=d.seed, help="model initialisation, batches, augmentations")
    ap.add_argument("--save-every", type=int, default=100, help="write the training state every N steps")
    ap.add_argument("--log-every", type=int, default=100, help="a log line every N steps (and at the first)")
    ap.add_argument("--restart", action="store_true", help="<out> holds a training of <arch> with other settings: "
                    "move its files aside into old-<date>/ and start afresh (default: refuse, naming what differs)")
    ap.add_argument("--verbose", action="store_true", help="third-party INFO logs too")
    ap.add_argument("--debug", action="store_true", help="full tracebacks for expected errors")
    return ap


def main(argv: Sequence[str] | None = None) -> Path:
    """CLI (see the module docstring)."""
    import open_clip

    from .common.cli import expected_errors, setup_logging
    from .common.clip import quiet_random_init, register_model_config
    from .common.outdir import claim

    args = _parser().parse_args(argv)
    setup_logging(args.verbose)
    with expected_errors(args.debug):
        from .common.data import require_path

        require_path(args.data, "training data (--data)", "a list file (path,caption[,...]) or a folder of class "
                     "folders")
        if args.label_aware and not Path(args.data).expanduser().is_dir():
            raise TrainConfigError(f"--label-aware needs one label per image, which only a folder of class folders "
                                   f"gives ({args.data} is a list file of captions): pass the folder, or drop "
                                   "--label-aware")
        cfg = TrainConfig(steps=args.steps, batch_size=args.batch_size, lr=args.lr, weight_decay=args.weight_decay,
                          warmup=args.warmup, seed=args.seed, augment=args.augment, augment_p=args.augment_p,
                          augment_from=args.augment_from, first_caption_p=args.first_caption_p,
                          crop_scale=tuple(args.crop_scale),
                          flip=not args.no_flip, label_aware=args.label_aware)
        name = register_model_config(args.config)
        out = Path(args.out)
        arch = json.loads(Path(args.config).read_text())
        # <out> may hold other models; this one's files are <name>.*: refuse other settings before any work
        claim(out, {"data": str(args.data), "arch": arch, "short_init": args.short_init, "config": cfg.__dict__},
              restart=args.restart, file=f"{name}.fingerprint.json",
              patterns=(f"{name}.pt", f"{name}.train.json", f"{name}-latest.pt"), new_folder="--out <another folder>",
              what=f"a training of {name}")
        from .common.preflight import WeightFile, require_intact

        require_intact([WeightFile("training checkpoint", out / f"{name}-latest.pt", RESUME_HINT)])   # pre-flight
        torch.manual_seed(args.seed)
        with quiet_random_init(True):   # training from scratch: open_clip's "No pretrained weights" is noise
            model = open_clip.create_model(name, pretrained=None)
        if args.short_init:
            init_for_short_training(model)
        from rlcf.reward import input_resolution

        data = load_training_data(args.data, input_resolution(model) or 224)
        tokens = tokens_for(data.captions, open_clip.get_tokenizer(name))
        logger.info("training %s on %d images (%s), %d steps", name, len(data.images), args.data, cfg.steps)
        losses = train_clip(model, data.images, tokens, cfg, desc=f"training {name}", labels=data.labels,
                            checkpoint=out / f"{name}-latest.pt", save_every=args.save_every, log_every=args.log_every)
        if args.short_init:
            eps = [m.eps for m in model.modules() if isinstance(m, torch.nn.LayerNorm)]
            if max(eps, default=0.0) <= 1e-9:
                rescale_text_tower(model, 0.02)   # same function, CLIP's embedding scale (see the world's ModelSpec)
            else:
                logger.warning("--short-init: token embeddings left at std ~1 (not rescaled to CLIP's 0.02: with "
                               "LayerNorm eps %g the rescale would change the text features); set "
                               "text_cfg.norm_kwargs.eps=1e-12 (and vision_cfg's) in %s for an exact rescale; prompt "
                               "lrs then need ~50x (benchmarks/prompt_scale.py)", max(eps), args.config)
        pt = save_clip(model, args.config, out, name, {"data": args.data, "config": cfg.__dict__,
                                                       "final_loss": sum(losses[-10:]) / len(losses[-10:])})
        logger.info("done: %d steps, final loss %.4f; saved %s; load it with load_clip(%r, %r, config_file=%r)",
                    len(losses), sum(losses[-10:]) / len(losses[-10:]), pt, name, str(pt),
                    str(out / f"{name}.json"))
        return pt


if __name__ == "__main__":
    main()
