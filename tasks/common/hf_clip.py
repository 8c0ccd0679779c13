"""Hugging Face transformers CLIP and SigLIP behind open_clip's small contract (policy and reward).

``load_hf_clip(folder)`` loads a local HF folder holding a ``CLIPModel`` or a ``SiglipModel`` (chosen by
``config.model_type``) with its image processor and tokenizer through transformers' own ``from_pretrained``
(``local_files_only``: never the network) and returns ``(model, preprocess, tokenizer)`` as
:func:`tasks.common.clip.load_clip` does:

* ``model`` (:class:`HFCLIP`): ``encode_image`` / ``encode_text`` / ``logit_scale`` (``logit_bias`` for SigLIP),
  the vision side under ``model.visual`` (what encoder tuning trains), the text side outside it, and a
  ``text_tower`` (:class:`tasks.common.text.TextTower`) for prompt tuning through input embeddings;
* ``preprocess``: PIL -> ``[3, H, W]``, the HF image processor's computation (its torchvision backend);
* ``tokenizer``: ``list[str] -> LongTensor [N, L]`` padded to the model's context, as the models were trained.

:func:`hf_clip_tokenizer_from_open_clip` makes an HF CLIP tokenizer from open_clip's shipped BPE vocabulary;
:func:`open_clip_to_hf` (:mod:`tasks.common.hf_convert`) converts an open_clip ViT CLIP to an HF ``CLIPModel``
with the same weights, so that both paths can be checked against each other.
"""
from __future__ import annotations

import json
import logging
from contextlib import contextmanager, nullcontext
from pathlib import Path
from typing import Any, Callable, Iterator, Sequence

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from .data import MissingDataError, UserError, hub_download_command
from .hf_convert import open_clip_to_hf

logger = logging.getLogger(__name__)

__all__ = ["HFCLIP", "HFVisual", "HFTextTower", "HFTokenizer", "load_hf_clip", "hf_preprocess",
           "hf_clip_tokenizer_from_open_clip", "open_clip_to_hf", "MODEL_TYPES"]

MODEL_TYPES = ("clip", "siglip")
OPENAI_MEAN = (0.48145466, 0.4578275, 0.40821073)
OPENAI_STD = (0.26862954, 0.26130258, 0.27577711)
_TOKENIZER_FILES = ("tokenizer.json", "vocab.json", "spiece.model", "tokenizer.model", "sentencepiece.bpe.model")


class HFVisual(nn.Module):
    """The vision side: ``vision_model`` (+ ``visual_projection`` for CLIP; SigLIP's head pools and projects).

    ``forward``: images ``[B, 3, H, W]`` -> unnormalised features ``[B, D]``. Attributes read by the toolkit:
    ``image_size`` (int), ``image_mean`` / ``image_std`` (tuples), ``output_dim`` (D).
    """

    def __init__(self, vision_model: nn.Module, projection: nn.Module | None, image_mean: Sequence[float],
                 image_std: Sequence[float], output_dim: int) -> None:
        super().__init__()
        self.vision_model = vision_model
        self.visual_projection = projection if projection is not None else nn.Identity()
        self.image_size = int(vision_model.config.image_size)
        self.image_mean = tuple(float(m) for m in image_mean)
        self.image_std = tuple(float(s) for s in image_std)
        self.output_dim = int(output_dim)

    def forward(self, images: Tensor) -> Tensor:
        return self.visual_projection(self.vision_model(pixel_values=images).pooler_output)


class HFTextTower:
    """:class:`tasks.common.text.TextTower` of an HF CLIP (causal, pooled at the EOS token) or SigLIP
    (bidirectional, pooled at the last position, so the full context must run) text model.

    Args:
        text_model: the HF ``CLIPTextModel`` / ``SiglipTextModel``.
        projection: CLIP's ``text_projection``; ``None`` for SigLIP (its ``text_model.head`` projects).
        causal: CLIP ``True``, SigLIP ``False``.
        eos_token_id: end-of-text id (default: the text config's; CLIP pools with the config's, as HF does).
    """

    def __init__(self, text_model: nn.Module, projection: nn.Module | None, causal: bool,
                 eos_token_id: int | None = None) -> None:
        self.text_model, self.projection, self.causal = text_model, projection, causal
        cfg = text_model.config
        self.context_length = int(cfg.max_position_embeddings)
        self.eos_token_id = int(cfg.eos_token_id if eos_token_id is None or causal else eos_token_id)
        self.legacy_argmax = causal and self.eos_token_id == 2   # HF: configs before PR #24773 pool at argmax

    def token_embedding(self, tokens: Tensor) -> Tensor:
        """``[N, L]`` ids -> ``[N, L, W]`` input embeddings."""
        return self.text_model.embeddings.token_embedding(tokens)

    def end_index(self, tokens: Tensor) -> Tensor:
        """``[N]`` end-of-text positions: the first ``eos_token_id`` (the highest id for legacy CLIP configs)."""
        if self.legacy_argmax:
            return tokens.to(torch.int).argmax(dim=-1)
        return (tokens == self.eos_token_id).int().argmax(dim=-1)

    def pool_index(self, tokens: Tensor) -> Tensor:
        """``[N]`` positions HF pools at: CLIP the end-of-text token, SigLIP the last position."""
        if self.causal:
            return self.end_index(tokens)
        return torch.full((tokens.shape[0],), tokens.shape[-1] - 1, dtype=torch.long, device=tokens.device)

    def features_from_embeddings(self, emb: Tensor, pool_index: Tensor, chunk: int | None = None) -> Tensor:
        """Unnormalised features ``[N, D]`` of input embeddings ``[N, L', W]`` read at ``pool_index`` ``[N]``:
        HF's text forward from ``inputs_embeds`` (position embeddings, the masks HF builds, final layer norm,
        pooling, projection). A causal tower may stop after the last pooled position (``L' <= L``)."""
        n, length, _ = emb.shape
        if chunk is not None and n > chunk:
            return torch.cat([self.features_from_embeddings(emb[i:i + chunk], pool_index[i:i + chunk])
                              for i in range(0, n, chunk)])
        if not self.causal and length != self.context_length:
            raise ValueError(f"a bidirectional text tower (SigLIP) needs the full context ({self.context_length} "
                             f"tokens), got {length}: it cannot be truncated")
        tm = self.text_model
        h = tm.embeddings(inputs_embeds=emb.to(tm.embeddings.token_embedding.weight.dtype))
        if self.causal:
            from transformers.models.clip import modeling_clip

            mask = modeling_clip.create_causal_mask(config=tm.config, inputs_embeds=h, attention_mask=None, cache=None)
            h = tm.encoder(inputs_embeds=h, attention_mask=mask, is_causal=True).last_hidden_state
        else:
            from transformers.models.siglip import modeling_siglip

            mask = modeling_siglip.create_bidirectional_mask(config=tm.config, inputs_embeds=h, attention_mask=None)
            h = tm.encoder(inputs_embeds=h, attention_mask=mask).last_hidden_state
        h = tm.final_layer_norm(h)
        x = h[torch.arange(n, device=h.device), pool_index.to(h.device)]
        return self.projection(x) if self.projection is not None else tm.head(x)


class HFCLIP(nn.Module):
    """An HF ``CLIPModel`` / ``SiglipModel`` with open_clip's contract (the wrapped modules are shared, not copied).

    Parameter names: the vision tower and its projection under ``visual.`` (``visual.vision_model.*``,
    ``visual.visual_projection.*``); the text side (``text_model.*``, ``text_projection.*``), ``logit_scale``
    and SigLIP's ``logit_bias`` outside it.

    Args:
        model: a transformers ``CLIPModel`` or ``SiglipModel``.
        image_mean, image_std: the image processor's normalisation (default: CLIP's / SigLIP's usual ones).
        eos_token_id: the tokenizer's end-of-text id (SigLIP: the config's default is CLIP's, not its tokenizer's).
    """

    def __init__(self, model: nn.Module, image_mean: Sequence[float] | None = None,
                 image_std: Sequence[float] | None = None, eos_token_id: int | None = None) -> None:
        super().__init__()
        kind = model.config.model_type
        if kind not in MODEL_TYPES:
            raise ValueError(f"HFCLIP wraps model_type {MODEL_TYPES}, got '{kind}'")
        self.model_type, self.config = kind, model.config
        clip = kind == "clip"
        if not clip and not model.config.vision_config.vision_use_head:
            raise NotImplementedError("SigLIP without its attention-pooling head (vision_use_head=False) has no "
                                      "image embedding to compare with the text's")
        default = (OPENAI_MEAN, OPENAI_STD) if clip else ((0.5,) * 3, (0.5,) * 3)
        dim = model.config.projection_dim if clip else model.config.vision_config.hidden_size
        self.visual = HFVisual(model.vision_model, model.visual_projection if clip else None,
                               image_mean or default[0], image_std or default[1], dim)
        self.text_model = model.text_model
        if clip:
            self.text_projection = model.text_projection
        self.logit_scale = model.logit_scale
        self.logit_bias = None if clip else model.logit_bias
        self.text_tower = HFTextTower(self.text_model, self.text_projection if clip else None, causal=clip,
                                      eos_token_id=eos_token_id)

    @property
    def context_length(self) -> int:
        return self.text_tower.context_length

    def encode_image(self, images: Tensor, normalize: bool = False) -> Tensor:
        """``[B, 3, H, W]`` -> ``[B, D]`` image features (L2-normalised if ``normalize``)."""
        f = self.visual(images)
        return F.normalize(f, dim=-1) if normalize else f

    def encode_text(self, tokens: Tensor, normalize: bool = False) -> Tensor:
        """``[B, L]`` ids -> ``[B, D]`` text features by the HF text forward (no padding mask, as trained)."""
        f = self.text_model(input_ids=tokens).pooler_output
        if self.model_type == "clip":
            f = self.text_projection(f)
        return F.normalize(f, dim=-1) if normalize else f

    def forward(self, image: Tensor | None = None, text: Tensor | None = None) -> tuple[Tensor | None, ...]:
        """open_clip's ``CLIP.forward``: ``(image_features, text_features, logit_scale.exp())``, normalised."""
        img = self.encode_image(image, normalize=True) if image is not None else None
        txt = self.encode_text(text, normalize=True) if text is not None else None
        return img, txt, self.logit_scale.exp()


class HFTokenizer:
    """``list[str] | str -> LongTensor [N, L]``: an HF tokenizer padded (``padding="max_length"``) and truncated
    to the model's context ``L`` (CLIP 77, SigLIP 64), as the models were trained."""

    def __init__(self, tokenizer: Any, context_length: int) -> None:
        self.tokenizer, self.context_length = tokenizer, int(context_length)

    @property
    def eos_token_id(self) -> int:
        return int(self.tokenizer.eos_token_id)

    def __call__(self, texts: str | Sequence[str], context_length: int | None = None) -> Tensor:
        texts = [texts] if isinstance(texts, str) else list(texts)
        out = self.tokenizer(texts, padding="max_length", truncation=True, return_tensors="pt",
                             max_length=context_length or self.context_length)
        return out["input_ids"].long()


class _ToUint8(nn.Module):
    """PIL -> ``[3, H, W]`` uint8, RGB with transparency composited on white (HF's ``convert_to_rgb``)."""

    def __init__(self, convert_rgb: bool = True) -> None:
        super().__init__()
        self.convert_rgb = convert_rgb

    def forward(self, img: Any) -> Tensor:
        import numpy as np
        from transformers.image_transforms import convert_to_rgb

        arr = convert_to_rgb(img, return_numpy=True) if self.convert_rgb else np.array(img)
        return torch.from_numpy(np.ascontiguousarray(arr)).permute(2, 0, 1).contiguous()


class _Resize(nn.Module):
    """HF's resize: the shortest edge to ``shortest`` (long edge ``int(shortest * long / short)``) or to
    ``(height, width)``, torchvision interpolation with antialias, on the uint8 image."""

    def __init__(self, interpolation: Any, shortest: int | None = None, hw: tuple[int, int] | None = None) -> None:
        super().__init__()
        self.interpolation, self.shortest, self.hw = interpolation, shortest, hw

    def forward(self, x: Tensor) -> Tensor:
        from torchvision.transforms.v2 import functional as tvF

        size = self.hw
        if size is None:
            h, w = x.shape[-2:]
            short, long = (w, h) if w <= h else (h, w)
            new_long = int(self.shortest * long / short)
            size = (new_long, self.shortest) if w <= h else (self.shortest, new_long)
        return tvF.resize(x, list(size), interpolation=self.interpolation, antialias=True)


class _CenterCrop(nn.Module):
    """HF's centre crop: zero-pad when smaller, offsets ``int((H - h) / 2)`` (torchvision rounds instead)."""

    def __init__(self, height: int, width: int) -> None:
        super().__init__()
        self.height, self.width = height, width

    def forward(self, x: Tensor) -> Tensor:
        from torchvision.transforms.v2 import functional as tvF

        h, w = x.shape[-2:]
        ch, cw = self.height, self.width
        if cw > w or ch > h:
            pad = [(cw - w) // 2 if cw > w else 0, (ch - h) // 2 if ch > h else 0,
                   (cw - w + 1) // 2 if cw > w else 0, (ch - h + 1) // 2 if ch > h else 0]
            x = tvF.pad(x, pad, fill=0)
            h, w = x.shape[-2:]
        return tvF.crop(x, int((h - ch) / 2.0), int((w - cw) / 2.0), ch, cw)


class _RescaleNormalize(nn.Module):
    """uint8 -> float32: ``(x - mean / s) / (std / s)`` (HF's fused rescale + normalise), or ``x * s``."""

    def __init__(self, scale: float | None, mean: Sequence[float] | None, std: Sequence[float] | None) -> None:
        super().__init__()
        self.scale, self.mean, self.std = scale, mean, std

    def forward(self, x: Tensor) -> Tensor:
        x = x.to(torch.float32)
        if self.mean is None:
            return x * self.scale if self.scale is not None else x
        s = 1.0 if self.scale is None else 1.0 / self.scale
        mean = [m * s for m in self.mean]
        std = [v * s for v in self.std]
        return (x - torch.tensor(mean).view(-1, 1, 1)) / torch.tensor(std).view(-1, 1, 1)


def hf_preprocess(processor: Any) -> Callable[[Any], Tensor]:
    """A torchvision ``Compose`` PIL -> ``[3, H, W]`` float32 equal to ``processor(images=img)`` (the HF image
    processor's torchvision backend: resize, centre crop, rescale, normalise, as its config says)."""
    from torchvision import transforms as T
    from transformers.image_utils import pil_torch_interpolation_mapping

    def get(name: str, default: Any = None) -> Any:
        return getattr(processor, name, default)

    steps: list[nn.Module] = [_ToUint8(bool(get("do_convert_rgb", True)))]
    if get("do_resize", False):
        size = dict(get("size"))
        resample = get("resample")
        interp = pil_torch_interpolation_mapping[resample] if resample is not None else T.InterpolationMode.BILINEAR
        if size.get("shortest_edge") and not size.get("longest_edge"):
            steps.append(_Resize(interp, shortest=int(size["shortest_edge"])))
        elif size.get("height") and size.get("width"):
            steps.append(_Resize(interp, hw=(int(size["height"]), int(size["width"]))))
        else:
            raise NotImplementedError(f"image processor size {size} is not supported (shortest_edge or height/width)")
    if get("do_center_crop", False):
        crop = dict(get("crop_size"))
        steps.append(_CenterCrop(int(crop["height"]), int(crop["width"])))
    normalize = get("do_normalize", False)
    steps.append(_RescaleNormalize(get("rescale_factor") if get("do_rescale", False) else None,
                                   get("image_mean") if normalize else None, get("image_std") if normalize else None))
    return T.Compose(steps)


def _download_hint(path: str | Path) -> str:
    """How to get the HF folder ``path`` (nothing is downloaded here)."""
    text = str(path)
    looks_like_repo = text.count("/") == 1 and not text.startswith((".", "/", "~")) and not Path(text).exists()
    repo = text if looks_like_repo else "<hub-id, e.g. openai/clip-vit-base-patch16 or google/siglip-base-patch16-224>"
    folder = f"pretrained/hf/{text.split('/')[-1]}" if looks_like_repo else text
    return (f"on a machine with network access run `{hub_download_command(repo, folder)}`, then pass that folder "
            f"(model.arch=hf:{folder}).")


def _missing(path: str | Path, what: str) -> MissingDataError:
    return MissingDataError(f"{what} (HF transformers model folder '{path}'). Nothing is downloaded here: "
                            + _download_hint(path))


@contextmanager
def _quiet_progress() -> Iterator[None]:
    """transformers' "Loading weights" bar off unless its logger is at INFO (``--verbose``): one progress bar
    per run, the runner's."""
    from transformers.utils import logging as hf_logging

    quiet = logging.getLogger("transformers").getEffectiveLevel() > logging.INFO and hf_logging.is_progress_bar_enabled()
    if quiet:
        hf_logging.disable_progress_bar()
    try:
        yield
    finally:
        if quiet:
            hf_logging.enable_progress_bar()


def load_hf_clip(path: str | Path, device: str | torch.device = "cpu", dtype: torch.dtype = torch.float32,
                 attn_implementation: str | None = None) -> tuple[HFCLIP, Callable[[Any], Tensor], HFTokenizer]:
    """Load a local HF ``CLIPModel`` / ``SiglipModel`` folder through transformers (``local_files_only``).

    Args:
        path: the folder (``config.json``, weights, ``preprocessor_config.json``, tokenizer files).
        device: target device.
        dtype: parameter dtype (fp32 by default, as the toolkit's open_clip models).
        attn_implementation: transformers' attention backend (``sdpa`` by default; ``eager`` also works).
    Returns:
        ``(model, preprocess, tokenizer)``: :class:`HFCLIP` in eval mode, PIL -> ``[3, H, W]``,
        ``list[str] -> LongTensor [N, L]``.
    Raises:
        MissingDataError: the folder or one of its files is missing (the message says how to get it).
    """
    p = Path(path).expanduser()
    if not p.is_dir():
        raise _missing(path, "not found")
    if not (p / "config.json").is_file():
        raise _missing(path, f"no config.json in '{p}'")
    from transformers import AutoConfig, AutoImageProcessor, AutoTokenizer, CLIPModel, SiglipModel

    config = AutoConfig.from_pretrained(p, local_files_only=True)
    classes = {"clip": CLIPModel, "siglip": SiglipModel}
    if config.model_type not in classes:
        raise UserError(f"'{p}' holds a '{config.model_type}' model; hf: models must be one of {MODEL_TYPES}")
    kw: dict[str, Any] = {"local_files_only": True, "dtype": dtype}
    if attn_implementation is not None:
        kw["attn_implementation"] = attn_implementation
    steps = [("model weights", lambda: classes[config.model_type].from_pretrained(p, **kw)),
             ("image processor (preprocessor_config.json)",
              lambda: AutoImageProcessor.from_pretrained(p, local_files_only=True)),
             ("tokenizer", lambda: AutoTokenizer.from_pretrained(p, local_files_only=True))]
    from .preflight import WeightFile, hf_weight_files, reading, require_intact

    weights = WeightFile("Hugging Face model weights", p, _download_hint(path))
    require_intact([weights])   # a truncated or corrupt weights file: one line naming it, before any load
    loaded = []
    with _quiet_progress():
        for what, load in steps:
            try:
                with reading((hf_weight_files(p) or [p])[0], weights.what, weights.hint) if not loaded \
                        else nullcontext():
                    loaded.append(load())
            except OSError as e:
                raise _missing(path, f"could not load the {what} from '{p}': {e}") from e
    model, processor, tok = loaded
    if not any((p / f).is_file() for f in _TOKENIZER_FILES) or len(tok) < 4:
        # transformers builds an empty 2-token CLIPTokenizer from config.json alone, without an error
        raise _missing(path, f"no tokenizer files in '{p}' (one of {', '.join(_TOKENIZER_FILES)})")
    eos = tok.eos_token_id if config.model_type == "siglip" else None
    hf_eos = config.text_config.eos_token_id
    if config.model_type == "clip" and hf_eos not in (2, tok.eos_token_id):
        logger.warning("HF CLIP pools text features at eos_token_id %s (config), but the tokenizer in %s ends texts "
                       "with %s: features may be read at the wrong position", hf_eos, p, tok.eos_token_id)
    clip = HFCLIP(model, processor.image_mean, processor.image_std, eos_token_id=eos).to(device).eval()
    logger.info("loaded HF %s from %s (%d parameters)", config.model_type, p, sum(t.numel() for t in clip.parameters()))
    return clip, hf_preprocess(processor), HFTokenizer(tok, clip.context_length)


def hf_clip_tokenizer_from_open_clip(folder: str | Path, context_length: int = 77) -> Any:
    """An HF ``CLIPTokenizer`` from open_clip's shipped BPE vocabulary (``bpe_simple_vocab_16e6.txt.gz``).

    Writes ``vocab.json`` and ``merges.txt`` into ``folder``, loads them with ``CLIPTokenizer.from_pretrained``
    and saves the tokenizer there (``tokenizer.json``, ``tokenizer_config.json``), so that ``AutoTokenizer`` and
    :func:`load_hf_clip` read the folder. The ids equal open_clip's up to the end-of-text token; padding is
    ``<|endoftext|>`` as OpenAI's HF tokenizers (open_clip pads with 0: same features, the towers never
    attend to padding before the EOS it pools at).
    """
    from open_clip.tokenizer import SimpleTokenizer
    from transformers import CLIPTokenizer

    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    st = SimpleTokenizer()
    vocab = dict(st.encoder)
    vocab["<|startoftext|>"] = vocab.pop("<start_of_text>")   # HF's names for the same ids (49406, 49407)
    vocab["<|endoftext|>"] = vocab.pop("<end_of_text>")
    (folder / "vocab.json").write_text(json.dumps(vocab, ensure_ascii=False), encoding="utf-8")
    merges = sorted(st.bpe_ranks.items(), key=lambda kv: kv[1])
    lines = ["#version: 0.2"] + [f"{a} {b}" for (a, b), _ in merges]
    (folder / "merges.txt").write_text("\n".join(lines) + "\n", encoding="utf-8")
    tok = CLIPTokenizer.from_pretrained(folder, local_files_only=True, model_max_length=context_length)
    tok.save_pretrained(folder)
    return tok
