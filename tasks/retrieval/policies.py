"""Retrieval policies over an open_clip ``CLIP`` (:class:`rlcf.DiscretePolicy`) and gallery encoding.

* :class:`ImageToTextPolicy`: the query is one test image ``[1, 3, H, W]``, the candidates are the
  gallery captions; the whole image tower is trainable, the gallery text features are cached.
* :class:`TextToImagePolicy`: the query is one caption (a string, tokenised by the policy's own
  tokenizer), the candidates are the gallery images; every non-visual parameter is trainable
  (transformer, token and positional embeddings, ``ln_final``, ``text_projection`` and, optionally,
  ``logit_scale``), as the official ``only_visual=False`` set-up; the gallery image features are cached.

Both are :class:`rlcf.DiscretePolicy`: ``logits = logit_scale.exp() * q @ g^T`` on L2-normalised features
(100 * cos for an OpenAI CLIP with a frozen scale). The reward reads the query itself (the image, or the
caption's text with each reward CLIP's own tokenizer): ``reward(query, candidates)``.
"""
from __future__ import annotations

import logging
from collections.abc import Callable, Iterable, Sequence

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from rlcf.policy import DiscretePolicy
from rlcf.reward import encode_batched

from ..common.text import text_features, text_tower

logger = logging.getLogger(__name__)

__all__ = ["ImageToTextPolicy", "TextToImagePolicy", "encode_tokens", "encode_text_gallery",
           "encode_image_gallery", "reward_members"]


def encode_tokens(clip: nn.Module, tokens: Tensor, truncate: bool = True) -> Tensor:
    """Unnormalised text features ``[N, D]`` of token ids ``[N, L]`` (with grad if enabled); see
    :func:`tasks.common.text.text_features` (a causal tower runs only up to the last EOT)."""
    return text_features(clip, tokens, truncate)


@torch.no_grad()
def encode_text_gallery(clip: nn.Module, tokenizer: Callable[[list[str]], Tensor], texts: Sequence[str],
                        batch_size: int = 256) -> Tensor:
    """Normalised features ``[N, D]`` (float32) of ``N`` captions by a frozen text tower."""
    return encode_batched(lambda chunk: F.normalize(encode_tokens(clip, tokenizer(list(chunk))).float(), dim=-1),
                          list(texts), batch_size, normalize=False)


@torch.no_grad()
def encode_image_gallery(batches: Iterable[Tensor], encoders: Sequence[Callable[[Tensor], Tensor]]) -> list[Tensor]:
    """One pass over the gallery images for several encoders.

    Args:
        batches: ``[B, 3, H, W]`` image batches, in gallery order.
        encoders: callables ``[B, 3, H, W] -> [B, D_e]`` (each moves the batch to its device).
    Returns:
        One normalised ``[N, D_e]`` float32 tensor per encoder.
    """
    feats: list[list[Tensor]] = [[] for _ in encoders]
    for x in batches:
        for f, enc in zip(feats, encoders, strict=True):
            f.append(F.normalize(enc(x).float(), dim=-1))
    return [torch.cat(f) for f in feats]


def reward_members(reward: object) -> list:
    """The :class:`rlcf.CLIPReward` members of a reward (itself, or an ensemble's)."""
    return list(getattr(reward, "rewards", [reward]))


class _RetrievalPolicy(DiscretePolicy):
    query_trainable: bool = True

    def __init__(self, clip: nn.Module, gallery: Tensor) -> None:
        super().__init__()
        self.clip = clip
        self.register_buffer("gallery", torch.empty(0), persistent=False)
        self.set_gallery(gallery)

    def set_gallery(self, feats: Tensor) -> None:
        """Cache the gallery features ``[N, D]`` (normalised here, float32)."""
        if feats.dim() != 2 or feats.shape[0] == 0:
            raise ValueError(f"gallery features must be a non-empty [N, D] tensor, got {tuple(feats.shape)}")
        self.gallery = F.normalize(feats.detach().float(), dim=-1).to(self.clip.logit_scale.device)

    def logits(self, q: Tensor) -> Tensor:
        """``[B, D]`` normalised query features -> ``[B, N]`` scores over the gallery, in float32 even
        under fp16 autocast (fp16 scores of 100 * cos tie every ~0.03 and would blur the ranking)."""
        with torch.autocast(device_type=q.device.type, enabled=False):
            return self.clip.logit_scale.exp().float() * q.float() @ self.gallery.t()


class ImageToTextPolicy(_RetrievalPolicy):
    """Image -> text: the visual tower is trainable, gallery caption features ``[N_txt, D]`` cached.

    Args:
        clip: open_clip ``CLIP``.
        gallery: text features of every gallery caption (see :func:`encode_text_gallery`).
    """

    def __init__(self, clip: nn.Module, gallery: Tensor) -> None:
        super().__init__(clip, gallery)

    def trainable_parameters(self) -> dict[str, nn.Parameter]:
        """The whole visual tower (official ``only_visual=True``)."""
        return {f"clip.visual.{n}": p for n, p in self.clip.visual.named_parameters()}

    def encode_query(self, images: Tensor) -> Tensor:
        """``[B, 3, H, W]`` float images -> normalised ``[B, D]``."""
        if images.dim() != 4 or not images.is_floating_point():
            raise ValueError(f"image queries must be float [B, 3, H, W], got {tuple(images.shape)} {images.dtype}")
        return F.normalize(self.clip.encode_image(images).float(), dim=-1)

    def train(self, mode: bool = True) -> ImageToTextPolicy:
        """Only the visual tower follows ``mode``; the frozen text side stays in eval."""
        super().train(False)
        self.clip.visual.train(mode)
        self.training = mode
        return self


class TextToImagePolicy(_RetrievalPolicy):
    """Text -> image: every non-visual parameter trainable, gallery image features ``[N_img, D]`` cached.

    Args:
        clip: open_clip ``CLIP``.
        gallery: image features of every gallery image (see :func:`encode_image_gallery`).
        tokenizer: the policy CLIP's tokenizer (``list[str] -> [B, L]``); queries are caption strings.
        train_logit_scale: tune ``logit_scale`` too (official: yes).
        truncate: run the text tower only up to the caption's EOT (see :func:`encode_tokens`).
    """

    def __init__(self, clip: nn.Module, gallery: Tensor, tokenizer: Callable[[list[str]], Tensor],
                 train_logit_scale: bool = True, truncate: bool = True) -> None:
        super().__init__(clip, gallery)
        self.tokenizer = tokenizer
        self.train_logit_scale = train_logit_scale
        self.truncate = truncate

    def as_tensor(self, inputs: Tensor | list[str]) -> Tensor:
        """Caption strings -> the policy tokenizer's ids ``[B, L]`` (a batch stacks them)."""
        return inputs if isinstance(inputs, Tensor) else self.tokenizer(list(inputs)).to(self.gallery.device)

    def batch_inputs(self, inputs: list[Tensor | list[str]]) -> Tensor:
        """``[B, 1, L]`` token ids of B captions, cut after the batch's last EOT (exact under the causal mask)."""
        tokens = torch.stack([self.as_tensor(x) for x in inputs])
        tower = text_tower(self.clip)
        if self.truncate and tower.causal:
            tokens = tokens[..., :int(tower.pool_index(tokens.flatten(0, 1)).max()) + 1]
        return tokens

    def trainable_parameters(self) -> dict[str, nn.Parameter]:
        """Every non-visual parameter (official ``only_visual=False``), ``logit_scale`` optionally."""
        return {f"clip.{n}": p for n, p in self.clip.named_parameters()
                if not n.startswith("visual.") and (n != "logit_scale" or self.train_logit_scale)}

    def encode_query(self, texts: Sequence[str] | Tensor) -> Tensor:
        """Captions (``B`` strings, tokenised here) or token ids ``[B, L]`` (long) -> normalised ``[B, D]``."""
        if isinstance(texts, Tensor):
            tokens = texts
            if tokens.dim() != 2 or tokens.is_floating_point():
                raise ValueError(f"text queries must be strings or token ids [B, L] (long), got "
                                 f"{tuple(tokens.shape)} {tokens.dtype}")
        else:
            if isinstance(texts, str) or not all(isinstance(t, str) for t in texts):
                raise ValueError("text queries must be a list of caption strings (or token ids [B, L])")
            tokens = self.tokenizer(list(texts))
        return F.normalize(encode_tokens(self.clip, tokens, self.truncate).float(), dim=-1)

    def train(self, mode: bool = True) -> TextToImagePolicy:
        """The text side follows ``mode``; the frozen visual tower stays in eval."""
        super().train(mode)
        self.clip.visual.eval()
        return self
