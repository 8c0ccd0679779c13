"""``rlcf train-clip``: train your own small CLIP on any image-caption data (:mod:`tasks.common.train_clip`).

    python -m tasks.train_clip --data my_list.csv --config MyCLIP.json --out pretrained/mine
    python -m tasks.train_clip --data my_images/ --config MyCLIP.json --label-aware --augment light --no-flip

``--data``: a list file (CSV / JSONL of ``path,caption[,caption...]``, :mod:`tasks.common.lists`) or a folder of
class folders (captions from the class names: ``"a photo of a <name>."``, and the labels known, so
``--label-aware`` can treat same-class pairs of a batch as positives, not negatives). ``--config``: an
open_clip architecture JSON. The result, ``<out>/<arch>.pt`` + ``<out>/<arch>.json``, loads with
``tasks.common.clip.load_clip(<arch>, "<out>/<arch>.pt", config_file="<out>/<arch>.json")`` (or
``model: {arch, pretrained, config_file}`` in any config).
"""
from __future__ import annotations

import argparse
import logging
from pathlib import Path
from typing import Sequence

import torch

from .common.augment import AUGMENTATIONS
from .common.train_clip import (TrainConfig, init_for_short_training, load_training_data, rescale_text_tower,
                                save_clip, tokens_for, train_clip)

logger = logging.getLogger(__name__)

__all__ = ["main"]


def main(argv: Sequence[str] | None = None) -> Path:
    """CLI (see the module docstring)."""
    import open_clip

    from .common.cli import expected_errors, setup_logging
    from .common.clip import quiet_random_init, register_model_config

    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--data", required=True, help="list file (CSV / JSONL: path,caption[,...]) or folder of class folders")
    ap.add_argument("--config", required=True, help="open_clip architecture JSON (its file name is the model name)")
    ap.add_argument("--out", default="pretrained/mine", help="output folder")
    ap.add_argument("--steps", type=int, default=600)
    ap.add_argument("--batch-size", type=int, default=128)
    ap.add_argument("--lr", type=float, default=1e-3)
    ap.add_argument("--augment", default="light", choices=list(AUGMENTATIONS))
    ap.add_argument("--no-flip", action="store_true", help="no horizontal flips (text, handwriting)")
    ap.add_argument("--label-aware", action="store_true", help="same-class pairs are positives (folder data)")
    ap.add_argument("--short-init", action="store_true",
                    help="init_for_short_training (as the world's models): ResNet bn3 scales 1, token embeddings std 1 "
                         "for training; afterwards the text tower is rescaled exactly to CLIP's token std 0.02 "
                         "(rescale_text_tower), so that prompt-tuning lrs mean what they mean for CLIP")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--verbose", action="store_true")
    ap.add_argument("--debug", action="store_true")
    args = ap.parse_args(argv)
    setup_logging(args.verbose)
    with expected_errors(args.debug):
        cfg = TrainConfig(steps=args.steps, batch_size=args.batch_size, lr=args.lr, seed=args.seed,
                          augment=args.augment, flip=not args.no_flip, label_aware=args.label_aware)
        name = register_model_config(args.config)
        torch.manual_seed(args.seed)
        with quiet_random_init(True):   # training from scratch: open_clip's "No pretrained weights" is noise
            model = open_clip.create_model(name, pretrained=None)
        if args.short_init:
            init_for_short_training(model)
        from rlcf.reward import input_resolution

        data = load_training_data(args.data, input_resolution(model) or 224)
        tokens = tokens_for(data.captions, open_clip.get_tokenizer(name))
        logger.info("training %s on %d images (%s), %d steps", name, len(data.images), args.data, cfg.steps)
        losses = train_clip(model, data.images, tokens, cfg, desc=f"training {name}", labels=data.labels)
        if args.short_init:
            eps = [m.eps for m in model.modules() if isinstance(m, torch.nn.LayerNorm)]
            if max(eps, default=0.0) <= 1e-9:
                rescale_text_tower(model, 0.02)   # same function, CLIP's embedding scale (see the world's ModelSpec)
            else:
                logger.warning("--short-init: token embeddings left at std ~1 (not rescaled to CLIP's 0.02: with "
                               "LayerNorm eps %g the rescale would change the text features); set "
                               "text_cfg.norm_kwargs.eps=1e-12 (and vision_cfg's) in %s for an exact rescale; prompt "
                               "lrs then need ~50x (benchmarks/prompt_scale.py)", max(eps), args.config)
        pt = save_clip(model, args.config, args.out, name, {"data": args.data, "config": cfg.__dict__,
                                                             "final_loss": sum(losses[-10:]) / len(losses[-10:])})
        logger.info("saved %s; load it with load_clip(%r, %r, config_file=%r)", pt, name, str(pt),
                    str(Path(args.out) / f"{name}.json"))
        return pt


if __name__ == "__main__":
    main()
