"""VLRM's ``sim(image, text)`` behind one interface: CLIP (scaled CLIPScore) or an image-text matching head.

Every similarity is a callable ``sim(batch, texts) -> [B]`` (no grad) with ``needs_pixels``, the contract
:class:`tasks.caption_rl.vlrm.VLRMRecipe` calls:

* :class:`CLIPSimilarity`: ``weight * max(cos, 0)`` of the reward CLIP (:func:`rlcf.clip_score` on the batch's
  cached reward-CLIP image features);
* :class:`ITMSimilarity`: the *positive logit* of an image-text matching head before the softmax (VLRM section
  3.4: "the positive logit of the BLIP2-ITM model output"), by default through ``transformers``'
  ``Blip2ForImageTextRetrieval(..., use_image_text_matching_head=True)``: the two-class head over the Q-Former's
  query outputs, averaged over the queries (``logits_per_image [B, 2]``), class 1 = match. It reads images, so the
  batch carries pixel values (``Batch.pixels``, from :attr:`tasks.caption_rl.data.RLData.pixels`).

Calibration of the CLIP scale: :mod:`tasks.caption_rl.calibrate`.
"""
from __future__ import annotations

import logging
from pathlib import Path
from typing import Any, Callable, Protocol, Sequence

import torch
from torch import Tensor, nn

from rlcf import CLIPReward, clip_score
from tasks.common.data import hub_download_command

from ..recipe import Batch, encode_reward_texts

logger = logging.getLogger(__name__)

__all__ = ["Similarity", "CLIPSimilarity", "ITMSimilarity", "load_blip2_itm", "ITM_HINT"]

#: how to get the BLIP-2 ITM folder (``.format(path=...)``); the command is the installed huggingface_hub's
ITM_HINT = ("Download Salesforce/blip2-itm-vit-g once on a machine with network access (e.g. `"
            + hub_download_command("Salesforce/blip2-itm-vit-g", "{path}") + "`) and copy the folder here.")


class Similarity(Protocol):
    """``sim(batch, texts) -> [B]`` similarity of each batch image with its caption (no grad)."""

    needs_pixels: bool

    def __call__(self, batch: Batch, texts: Sequence[str]) -> Tensor: ...


class CLIPSimilarity:
    """``weight * max(cos(image, text), 0)`` of the reward CLIP (:func:`rlcf.clip_score`).

    Args:
        reward: the frozen reward CLIP; the batch's ``reward_feats`` are its image embeddings.
        weight: ``clip_weight`` (VLRM config; see :mod:`tasks.caption_rl.calibrate`).
    """

    needs_pixels = False

    def __init__(self, reward: CLIPReward, weight: float = 10.0) -> None:
        self.reward, self.weight = reward, float(weight)

    @torch.no_grad()
    def __call__(self, batch: Batch, texts: Sequence[str]) -> Tensor:
        txt = encode_reward_texts(self.reward, list(texts))
        return clip_score(batch.reward_feats.to(txt.device).float(), txt, self.weight)


class ITMSimilarity:
    """Positive image-text matching logit, ``weight * logits_per_image[:, 1]`` of an ITM model.

    Args:
        model: ``Blip2ForImageTextRetrieval`` (or any module with the same ``forward(pixel_values, input_ids,
            attention_mask, use_image_text_matching_head=True) -> .logits_per_image [B, 2]``); frozen here.
        tokenizer: its text tokenizer (``list[str] -> {"input_ids", "attention_mask"}``, e.g. the processor's
            BERT tokenizer), called with padding and truncation to ``max_length``.
        weight: scale of the logit (VLRM: 1).
        batch_size: image-text pairs per forward.
        max_length: text tokens (BLIP-2: 32 in LAVIS' ITM, 512 in the tokenizer).
    """

    needs_pixels = True

    def __init__(self, model: nn.Module, tokenizer: Callable[..., Any], weight: float = 1.0, batch_size: int = 64,
                 max_length: int = 64) -> None:
        self.model = model.eval().requires_grad_(False)
        self.tokenizer, self.weight, self.batch_size, self.max_length = tokenizer, float(weight), batch_size, max_length

    @property
    def device(self) -> torch.device:
        return next(self.model.parameters()).device

    @torch.no_grad()
    def scores(self, pixels: Tensor, texts: Sequence[str]) -> Tensor:
        """``[B]`` positive ITM logits of ``B`` (image, text) pairs; ``pixels [B, 3, H, W]`` as the model expects."""
        if pixels.shape[0] != len(texts):
            raise ValueError(f"ITM needs one text per image: {pixels.shape[0]} images, {len(texts)} texts")
        dtype = next(self.model.parameters()).dtype
        out = []
        for s in range(0, len(texts), self.batch_size):
            tok = self.tokenizer(list(texts[s:s + self.batch_size]), padding=True, truncation=True,
                                 max_length=self.max_length, return_tensors="pt")
            res = self.model(pixel_values=pixels[s:s + self.batch_size].to(self.device, dtype),
                             input_ids=tok["input_ids"].to(self.device),
                             attention_mask=tok["attention_mask"].to(self.device), use_image_text_matching_head=True)
            out.append(res.logits_per_image[:, 1].float())
        return self.weight * torch.cat(out)

    def __call__(self, batch: Batch, texts: Sequence[str]) -> Tensor:
        if batch.pixels is None:
            raise ValueError("the ITM similarity needs the batch's images: build RLData with pixels=... "
                             "(tasks.caption_rl.data.RLData.pixels)")
        return self.scores(batch.pixels, texts)


def load_blip2_itm(path: str | Path, device: str | torch.device = "cpu",
                   dtype: torch.dtype = torch.float32) -> tuple[nn.Module, Any, Any]:
    """``(Blip2ForImageTextRetrieval, tokenizer, image_processor)`` from a local folder (never the network).

    Raises:
        MissingDataError: the folder or its ``config.json`` is missing (the message says how to get it).
    """
    from transformers import AutoImageProcessor, AutoTokenizer, Blip2ForImageTextRetrieval

    from tasks.common.data import MissingDataError

    p = Path(path).expanduser()
    if not (p / "config.json").is_file():
        raise MissingDataError(f"ITM model folder '{p}' not found (or has no config.json). " + ITM_HINT.format(path=p))
    model = Blip2ForImageTextRetrieval.from_pretrained(str(p), dtype=dtype, local_files_only=True)
    tok = AutoTokenizer.from_pretrained(str(p), local_files_only=True)
    proc = AutoImageProcessor.from_pretrained(str(p), local_files_only=True)
    return model.to(device).eval(), tok, proc
