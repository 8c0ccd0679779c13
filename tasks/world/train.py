"""The world's use of the contrastive trainer (:mod:`tasks.common.train_clip`): its short-run initialisation
and zero-shot evaluation (the world's command line is ``python -m tasks.world``: :mod:`tasks.world.__main__`)."""
from __future__ import annotations

import logging
from typing import Callable, Sequence

import torch

from tasks.common.train_clip import TrainConfig, normalize, train_clip

logger = logging.getLogger(__name__)

__all__ = ["TrainConfig", "train_clip", "init_for_short_training", "normalize", "zero_shot_predict",
           "zero_shot_accuracy"]   # TrainConfig, train_clip, normalize: from tasks.common.train_clip


def init_for_short_training(model: torch.nn.Module, token_std: float = 1.0) -> int:
    """Re-initialise two open_clip defaults that stall short from-scratch runs; return #BN scales reset.

    * ``ModifiedResNet`` zero-initialises ``bn3.weight`` of every bottleneck (the residual branch
      starts switched off), which suits deep nets trained for long; with one block per stage and a
      few hundred steps the image tower starts almost linear and learning stalls (dev, supervised
      proxy: loss 2.8 vs 1.7 after 150 steps).  Reset to 1.
    * The token embedding is drawn with std 0.02, so at init the class prompts ("a photo of a
      star." / "... ring.") are nearly the same vector and the loss sits on a plateau; std 1
      (``nn.Embedding``'s default) shortens it (dev zero-shot after 300 steps: 15 % -> 35 %).

    Only initial values change; the architecture and the checkpoint format are open_clip's.
    """
    n = 0
    for name, p in model.named_parameters():
        if name.startswith("visual.layer") and name.endswith("bn3.weight"):
            torch.nn.init.ones_(p)
            n += 1
    emb = getattr(model, "token_embedding", None)
    if emb is not None:
        torch.nn.init.normal_(emb.weight, std=token_std)
    return n


@torch.no_grad()
def zero_shot_predict(model: torch.nn.Module, images: torch.Tensor, text_features: torch.Tensor,
                      batch_size: int = 256) -> torch.Tensor:
    """Predicted labels ``(N,)`` of ``uint8`` images ``(N, 3, H, W)`` against ``text_features`` ``(C, D)``."""
    from rlcf.reward import encode_batched

    model.eval()
    if images.shape[0] == 0:
        return torch.zeros(0, dtype=torch.long)
    f = encode_batched(lambda x: model.encode_image(normalize(x)), images, batch_size)
    return (f @ text_features.T.float()).argmax(-1)


def zero_shot_accuracy(model: torch.nn.Module, tokenizer: Callable, images: torch.Tensor, labels: torch.Tensor,
                       classnames: Sequence[str], templates: Sequence[str] = ("a photo of a {}.",)) -> float:
    """Plain zero-shot accuracy (``logits = image features @ normalised class-prompt features``)."""
    from tasks.common.clip import zero_shot_classifier

    tf = zero_shot_classifier(model, tokenizer, classnames, templates)
    return float((zero_shot_predict(model, images, tf) == labels).float().mean())
