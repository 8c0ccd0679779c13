"""The CLIP-space discriminator of Chaffin et al. (2024): human vs generated captions, given the image.

An MLP on ``[image embedding ; text embedding]`` (``2D -> 512 -> ReLU -> 256 -> ReLU -> 2``, softmax), trained
online with binary cross-entropy on the "human" probability: ground-truth captions are real (1), the
policy's captions fake (0); Adam, lr 7e-5. Its human probability (computed before its update, no grad) is a
reward term: ``r = 0.94 * contrastive + 0.06 * D(image, text)``.

The official discriminator starts from a pre-trained checkpoint (``pretrained_disc_scst_repro_27999``, not public):
:mod:`tasks.caption_rl.gt.pretrain_disc` pre-trains one on ground-truth vs captioner captions, and
:func:`save_discriminator` / :func:`load_discriminator` store and reload it.
"""
from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Sequence

import torch
import torch.nn.functional as F
from torch import Tensor, nn

logger = logging.getLogger(__name__)

__all__ = ["CLIPDiscriminator", "DiscriminatorStats", "discriminator_step", "save_discriminator", "load_discriminator"]


class CLIPDiscriminator(nn.Module):
    """MLP over concatenated, L2-normalised CLIP embeddings.

    Args:
        dim: CLIP embedding size ``D`` (the input is ``2D``).
        hidden: hidden widths (paper: 512, 256).
    """

    def __init__(self, dim: int, hidden: Sequence[int] = (512, 256)) -> None:
        super().__init__()
        layers: list[nn.Module] = []
        width = 2 * dim
        for h in hidden:
            layers += [nn.Linear(width, h), nn.ReLU()]
            width = h
        layers.append(nn.Linear(width, 2))
        self.net = nn.Sequential(*layers)
        self.dim, self.hidden = dim, tuple(hidden)

    def forward(self, image_feats: Tensor, text_feats: Tensor) -> Tensor:
        """``[N, D]``, ``[N, D]`` -> ``[N, 2]`` logits (class 1 = human-written)."""
        x = torch.cat([F.normalize(image_feats.float(), dim=-1), F.normalize(text_feats.float(), dim=-1)], dim=-1)
        return self.net(x)

    def human_prob(self, image_feats: Tensor, text_feats: Tensor) -> Tensor:
        """``[N]`` probability that the caption is human-written."""
        return torch.softmax(self(image_feats, text_feats), dim=-1)[:, 1]


@dataclass
class DiscriminatorStats:
    """Result of one discriminator update: the rewards (human probabilities before the update) and diagnostics."""

    p_real: Tensor   # [B] human probability of the ground-truth captions (no grad)
    p_fake: Tensor   # [B] human probability of the generated captions (no grad)
    loss: float
    accuracy: float


def discriminator_step(disc: CLIPDiscriminator, optimizer: torch.optim.Optimizer | None, image_feats: Tensor,
                       real_text: Tensor, fake_text: Tensor) -> DiscriminatorStats:
    """One BCE step on ``B`` real and ``B`` fake pairs (the same images); ``optimizer=None`` only scores.

    Args:
        image_feats: ``[B, D]`` image embeddings.
        real_text: ``[B, D]`` ground-truth caption embeddings (label 1).
        fake_text: ``[B, D]`` generated caption embeddings (label 0).
    """
    images = torch.cat([image_feats, image_feats]).detach()
    texts = torch.cat([fake_text, real_text]).detach()
    labels = torch.cat([torch.zeros(len(fake_text)), torch.ones(len(real_text))]).to(images.device)
    with torch.enable_grad():
        p = disc.human_prob(images, texts)
        loss = F.binary_cross_entropy(p, labels)
        if optimizer is not None:
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
    p = p.detach()
    acc = float(((p > 0.5).float() == labels).float().mean())
    b = len(fake_text)
    return DiscriminatorStats(p_real=p[b:], p_fake=p[:b], loss=float(loss.detach()), accuracy=acc)


DISC_FORMAT = "rlcf-caption-discriminator/1"


def save_discriminator(disc: CLIPDiscriminator, path: str | Path, meta: dict | None = None) -> None:
    """Write ``disc`` (its input size, widths and weights, plus ``meta``) atomically to ``path``."""
    from tasks.captioning.checkpoint import save_atomic

    save_atomic({"format": DISC_FORMAT, "dim": disc.dim, "hidden": list(disc.hidden),
                 "state_dict": disc.state_dict(), "meta": meta or {}}, path)


def load_discriminator(path: str | Path, dim: int | None = None, hidden: Sequence[int] | None = None,
                       device: str | torch.device = "cpu") -> CLIPDiscriminator:
    """A discriminator saved by :func:`save_discriminator` (or a bare ``state_dict`` of the official ``MLP``
    ``Sequential(Linear(2D, 512), ReLU, Linear(512, 256), ReLU, Linear(256, 2))``, same layer indices).

    Args:
        dim, hidden: the embedding size and widths the recipe expects; a file made for others is an error.
    Raises:
        FileNotFoundError: no such file (the message says how to make one); ValueError: wrong sizes.
    """
    p = Path(path)
    if not p.is_file():
        raise FileNotFoundError(f"discriminator checkpoint '{p}' not found: pre-train one with "
                                "`python -m tasks.caption_rl.gt.pretrain_disc --config <config>` "
                                "(or gt.disc_pretrain.steps)")
    blob = torch.load(p, map_location="cpu", weights_only=False)
    if isinstance(blob, dict) and blob.get("format") == DISC_FORMAT:
        sd, d, h = blob["state_dict"], int(blob["dim"]), tuple(blob["hidden"])
    else:   # an official-style bare Sequential state dict: net.{0,2,4}.weight
        sd = {f"net.{k}": v for k, v in blob.items()}
        ws = [sd[k] for k in sorted((k for k in sd if k.endswith(".weight")), key=lambda k: int(k.split(".")[1]))]
        d, h = int(ws[0].shape[1]) // 2, tuple(int(w.shape[0]) for w in ws[:-1])
    if (dim is not None and d != dim) or (hidden is not None and tuple(hidden) != h):
        raise ValueError(f"discriminator '{p}' is for embeddings of size {d} with widths {list(h)}; the recipe needs "
                         f"{dim} and {list(hidden) if hidden is not None else list(h)} (gt.disc_hidden)")
    disc = CLIPDiscriminator(d, h)
    disc.load_state_dict(sd)
    logger.info("loaded discriminator %s (dim %d, widths %s)", p, d, list(h))
    return disc.to(device)
