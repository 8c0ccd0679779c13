"""Calibrating VLRM's CLIP ``sim`` to the spread of the paper's BLIP-2 ITM logit.

VLRM's ``sim`` is the BLIP-2 ITM positive logit; our CLIP variant is ``clip_weight * max(cos, 0)``. Advantages are
normalised, so what matters is how much ``sim`` moves between captions of the same image compared with the
-1-per-token penalties and ``ref``. The calibration matches that *within-image spread*:

* target (:func:`paper_itm_spread`): Tables 4-5 of the paper give ITM and CLIP scores of three captions (BLIP-2,
  VLRM, VLRM-RS) for nine images; the spread is the mean over images of the standard deviation (``K - 1``
  denominator) of the scores across the image's captions: ITM 1.38 (CLIP column 0.031, so the paper's own CLIP
  would need a weight of 44);
* measured (:func:`measure_cos_spread`): the same statistic of the reward CLIP's ``max(cos, 0)`` over ``k``
  captions per image sampled with the recipe's rollout decoding from the supervised captioner (the captions the
  first advantages are computed on);
* ``clip_weight = target / measured`` (:func:`calibrated_clip_weight`).

``python -m tasks.caption_rl.vlrm.calibrate [--captioner PATH] [--images 256] [--k 8]`` measures it in the embedded world
(the world's reward CLIP, train images) and prints the weight.
"""
from __future__ import annotations

import argparse
import json
import logging
from pathlib import Path
from typing import Sequence

import torch
from torch import Tensor

from rlcf import CLIPReward, clip_score
from tasks.captioning.model import PrefixCaptioner

from ..recipe import encode_reward_texts
from ..decoding import DecodingConfig, resolve_decoding
from ..rollout import generate_rollout

logger = logging.getLogger(__name__)

__all__ = ["PAPER_TABLES_ITM", "PAPER_TABLES_CLIP", "within_image_spread", "paper_itm_spread", "measure_cos_spread",
           "calibrated_clip_weight", "main"]

#: VLRM Tables 4-5: rows = images, columns = captions of BLIP-2, VLRM, VLRM-RS.
PAPER_TABLES_ITM: tuple[tuple[float, float, float], ...] = (
    (3.148, 4.881, 5.111), (2.232, 4.543, 4.824), (4.031, 6.110, 6.163), (5.529, 5.840, 6.074),
    (-0.009, 3.152, 4.083), (0.936, 5.402, 5.549), (1.565, 3.552, 4.010), (1.569, 4.451, 4.153),
    (2.690, 4.303, 3.723))
PAPER_TABLES_CLIP: tuple[tuple[float, float, float], ...] = (
    (0.326, 0.342, 0.343), (0.319, 0.318, 0.333), (0.364, 0.414, 0.435), (0.271, 0.318, 0.308),
    (0.114, 0.240, 0.269), (0.302, 0.369, 0.399), (0.233, 0.333, 0.312), (0.305, 0.314, 0.302),
    (0.330, 0.345, 0.353))


def within_image_spread(scores: Tensor) -> float:
    """``[I, K]`` scores of ``K`` captions for each of ``I`` images -> mean over images of the per-image standard
    deviation (``K - 1`` denominator)."""
    if scores.dim() != 2 or scores.shape[1] < 2:
        raise ValueError(f"scores must be [images, captions >= 2], got {tuple(scores.shape)}")
    return float(scores.float().std(dim=1).mean())


def paper_itm_spread() -> float:
    """Within-image spread of the ITM logits in VLRM Tables 4-5 (1.38)."""
    return within_image_spread(torch.tensor(PAPER_TABLES_ITM))


@torch.no_grad()
def measure_cos_spread(captioner: PrefixCaptioner, reward: CLIPReward, prefix_feats: Tensor, reward_feats: Tensor,
                       k: int = 8, decoding: DecodingConfig | None = None, seed: int = 0) -> float:
    """Within-image spread of ``max(cos, 0)`` (reward CLIP) over ``k`` sampled captions per image.

    Args:
        prefix_feats: ``[I, Dp]`` captioner inputs; reward_feats: ``[I, Dr]`` reward-CLIP image embeddings.
        decoding: the rollout decoding (default: VLRM's top-k 6, temperature 2 sampling).
    """
    if k < 2:
        raise ValueError(f"k must be >= 2 captions per image, got {k}")
    decoding = decoding or resolve_decoding("vlrm_rollout")
    torch.manual_seed(seed)
    cols = []
    for _ in range(k):
        texts = generate_rollout(captioner, prefix_feats.to(captioner.device), decoding).texts
        txt = encode_reward_texts(reward, texts)
        cols.append(clip_score(reward_feats.to(txt.device).float(), txt, 1.0).cpu())
    return within_image_spread(torch.stack(cols, dim=1))


def calibrated_clip_weight(cos_spread: float, target: float | None = None) -> float:
    """``clip_weight`` giving ``clip_weight * max(cos, 0)`` the target spread (default :func:`paper_itm_spread`)."""
    if cos_spread <= 0:
        raise ValueError(f"cos_spread must be > 0, got {cos_spread} (captions that never differ?)")
    return (paper_itm_spread() if target is None else target) / cos_spread


def main(argv: Sequence[str] | None = None) -> dict:
    """World measurement (see the module docstring); prints and returns ``{"clip_weight", ...}``."""
    from ...captioning.world_demo import load_world_model, train_world_captioner, world_split
    from ..world import embed_images

    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--captioner", default=None, help="supervised world captioner (else trained in --out-dir)")
    ap.add_argument("--out-dir", default="output/world_caption_rl/calibrate")
    ap.add_argument("--data-root", default="data/world")
    ap.add_argument("--images", type=int, default=256)
    ap.add_argument("--k", type=int, default=8)
    ap.add_argument("--n-train", type=int, default=2000, help="training images of the captioner when trained here")
    ap.add_argument("--threads", type=int, default=1)
    args = ap.parse_args(argv)
    from ...common.cli import setup_logging

    setup_logging()   # project INFO, third-party WARNING
    torch.set_num_threads(args.threads)
    dev = torch.device("cpu")
    pclip, ppre, _ = load_world_model("world:policy", dev)
    rclip, rpre, rtok = load_world_model("world:reward", dev)
    if args.captioner:
        from ...captioning.checkpoint import load_captioner

        captioner = load_captioner(args.captioner)
    else:
        train = world_split("train", args.n_train, args.data_root)
        captioner, _ = train_world_captioner(train, pclip, ppre, Path(args.out_dir) / "captioner", 4, 0)
    imgs = world_split("train", args.images, args.data_root)
    spread = measure_cos_spread(captioner, CLIPReward(rclip, rtok), embed_images(pclip, ppre, imgs.images),
                                embed_images(rclip, rpre, imgs.images), args.k)
    res = {"cos_spread": spread, "itm_spread": paper_itm_spread(), "clip_weight": calibrated_clip_weight(spread),
           "images": args.images, "k": args.k, "reward": "world:reward"}
    print(json.dumps(res, indent=2))
    return res


if __name__ == "__main__":
    from tasks.common.cli import run_main

    run_main(main)
