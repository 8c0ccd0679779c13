"""Text towers behind one small interface, for prompt tuning and cached text features.

:func:`text_tower` gives, for any supported CLIP-like model, an object with::

    tower.causal                            # causal attention mask (CLIP) or bidirectional (SigLIP)
    tower.context_length                    # L of the tokenizer's padded ids
    tower.token_embedding(tokens)           # [N, L] ids -> [N, L, W] input embeddings
    tower.end_index(tokens)                 # [N] position of the end-of-text token
    tower.pool_index(tokens)                # [N] position the features are read from
    tower.features_from_embeddings(emb, pool_index)   # [N, L', W] -> [N, D] unnormalised features

open_clip ``CLIP`` (built-in text tower; features at the EOT token, causal: the context can be cut
after the last EOT, exactly) and open_clip ``CustomTextCLIP`` (``model.text``; SigLIP: bidirectional
attention, features read at the last position, so the full context must run) are handled here; other
model wrappers (``tasks.common.hf_clip``) expose a ``text_tower`` attribute with the same interface.
"""
from __future__ import annotations

from typing import Any, Protocol

import torch
from torch import Tensor, nn

__all__ = ["TextTower", "OpenCLIPText", "text_tower", "text_features", "encode_texts"]


class TextTower(Protocol):
    causal: bool
    context_length: int

    def token_embedding(self, tokens: Tensor) -> Tensor: ...

    def end_index(self, tokens: Tensor) -> Tensor: ...

    def pool_index(self, tokens: Tensor) -> Tensor: ...

    def features_from_embeddings(self, emb: Tensor, pool_index: Tensor, chunk: int | None = None) -> Tensor: ...


class OpenCLIPText:
    """The text tower of an open_clip ``CLIP`` or ``CustomTextCLIP`` (``model.text``)."""

    def __init__(self, clip: nn.Module) -> None:
        tower = clip.text if isinstance(getattr(clip, "text", None), nn.Module) else clip
        if getattr(tower, "cls_emb", None) is not None or getattr(tower, "use_pad_mask", False):
            raise NotImplementedError("text towers with an appended CLS embedding or a padding mask (CoCa-style) "
                                      "are not supported")
        self.tower = tower
        self.pool = getattr(clip, "text_pool_type", None) or getattr(tower, "pool_type", "argmax")
        self.eos_id = getattr(clip, "text_eos_id", None) or getattr(tower, "eos_id", None)
        if self.pool not in ("argmax", "eos", "last", "first"):
            raise NotImplementedError(f"text_pool_type '{self.pool}' is not supported")
        self.causal = tower.attn_mask is not None
        self.context_length = int(tower.positional_embedding.shape[0])

    def token_embedding(self, tokens: Tensor) -> Tensor:
        return self.tower.token_embedding(tokens)

    def end_index(self, tokens: Tensor) -> Tensor:
        """End-of-text positions: the first ``eos_id`` for tokenizers with one (``pool='eos'``), else the
        highest id (CLIP's BPE: EOT is the largest token id)."""
        if self.pool == "eos" and self.eos_id is not None:
            return (tokens == self.eos_id).int().argmax(dim=-1)
        return tokens.argmax(dim=-1)

    def pool_index(self, tokens: Tensor) -> Tensor:
        if self.pool in ("argmax", "eos"):
            return self.end_index(tokens)
        pos = 0 if self.pool == "first" else tokens.shape[-1] - 1
        return torch.full((tokens.shape[0],), pos, dtype=torch.long, device=tokens.device)

    def features_from_embeddings(self, emb: Tensor, pool_index: Tensor, chunk: int | None = None) -> Tensor:
        """Run the tower on token embeddings ``[N, L, W]``; ``L`` may stop after every pooled position
        when the attention is causal (a token's output depends only on the ones before it)."""
        n, length, _ = emb.shape
        if chunk is not None and n > chunk:
            return torch.cat([self.features_from_embeddings(emb[i:i + chunk], pool_index[i:i + chunk])
                              for i in range(0, n, chunk)])
        t = self.tower
        if not self.causal and length != self.context_length:
            raise ValueError("a bidirectional text tower (SigLIP) needs the full context; it cannot be truncated")
        cast = t.transformer.get_cast_dtype()
        x = emb.to(cast) + t.positional_embedding[:length].to(cast)
        x = t.transformer(x, attn_mask=t.attn_mask[:length, :length] if self.causal else None)
        x = t.ln_final(x)
        x = x[torch.arange(n, device=x.device), pool_index]
        proj = t.text_projection
        if proj is not None:
            x = proj(x) if isinstance(proj, nn.Module) else x @ proj
        return x


def text_tower(clip: Any) -> TextTower:
    """The :class:`TextTower` of ``clip`` (its own ``text_tower`` attribute when it has one)."""
    own = getattr(clip, "text_tower", None)
    return own if own is not None else OpenCLIPText(clip)


def text_features(clip: nn.Module, tokens: Tensor, truncate: bool = True, chunk: int | None = None) -> Tensor:
    """Unnormalised text features ``[N, D]`` of token ids ``[N, L]`` (with grad if enabled); a causal tower
    runs only up to the last EOT when ``truncate`` (exact)."""
    tower = text_tower(clip)
    emb_weight = next(iter(clip.parameters()))
    tokens = tokens.to(emb_weight.device)
    idx = tower.pool_index(tokens)
    batched = torch._C._functorch.is_batchedtensor(tokens)   # under vmap: no data-dependent length
    length = int(idx.max()) + 1 if truncate and tower.causal and not batched else tokens.shape[1]
    return tower.features_from_embeddings(tower.token_embedding(tokens[:, :length]), idx, chunk)


@torch.no_grad()
def encode_texts(clip: nn.Module, tokens: Tensor, chunk: int | None = 256, truncate: bool = True) -> Tensor:
    """Normalised text features ``[N, D]`` (float32) of token ids by a frozen text tower."""
    return torch.nn.functional.normalize(text_features(clip, tokens, truncate, chunk).float(), dim=-1)
