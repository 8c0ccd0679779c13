"""The world's use of the contrastive trainer (:mod:`tasks.common.train_clip`): its short-run initialisation
and zero-shot evaluation (the world's command line is ``python -m tasks.world``: :mod:`tasks.world.__main__`)."""
from __future__ import annotations

import logging
from typing import Callable, Sequence

import torch

from tasks.common.train_clip import TrainConfig, init_for_short_training, normalize, rescale_text_tower, train_clip

logger = logging.getLogger(__name__)

__all__ = ["TrainConfig", "train_clip", "init_for_short_training", "rescale_text_tower", "normalize", "zero_shot_predict",
           "zero_shot_accuracy"]   # TrainConfig, train_clip, init_for_short_training, normalize: from tasks.common.train_clip


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
                       classnames: Sequence[str], templates: str | Sequence[str] = ("a photo of a {}.",)) -> float:
    """Plain zero-shot accuracy (``logits = image features @ normalised class-prompt features``); ``templates``:
    one template string (as ``EncoderPolicy(template=)``) or several (averaged)."""
    from tasks.common.clip import zero_shot_classifier

    templates = [templates] if isinstance(templates, str) else templates
    tf = zero_shot_classifier(model, tokenizer, classnames, templates)
    return float((zero_shot_predict(model, images, tf) == labels).float().mean())


if __name__ == "__main__":   # ``python -m tasks.world.train``: the world's command line, as ``python -m tasks.world``
    import runpy

    runpy.run_module("tasks.world", run_name="__main__", alter_sys=True)
