"""Classification policies over an open_clip ``CLIP``: prompt tuning, image-encoder tuning and class-prototype
shifting.

All are :class:`rlcf.DiscretePolicy`: ``logits(encode_query(images))`` with
``logits = logit_scale.exp() * img @ txt^T`` on L2-normalised features. Each declares what it trains
(:meth:`trainable_parameters`) instead of flipping ``requires_grad`` on the CLIP, so several policies
may share one CLIP (the engine lets exactly a policy's parameters require grad during its steps).
"""
from __future__ import annotations

import logging
from typing import Callable, Sequence

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from rlcf.policy import DiscretePolicy

from ..common.text import encode_texts, text_tower
from .datasets.base import ClassDescriptions

logger = logging.getLogger(__name__)

__all__ = ["PromptPolicy", "EncoderPolicy", "PrototypePolicy", "encode_texts", "class_prompts", "context_of_template",
           "class_text_features", "POOLINGS"]

#: how :func:`class_text_features` pools a class's texts when descriptions are among its templates
POOLINGS = ("texts", "groups")


def class_prompts(classnames: Sequence[str], template: str = "a photo of a {}.") -> list[str]:
    """``template.format(name)`` with underscores in names replaced by spaces."""
    if len(classnames) == 0:
        raise ValueError("zero classes: a classification policy needs at least one class name")
    return [template.format(n.replace("_", " ")) for n in classnames]


def class_text_features(clip: nn.Module, tokenizer: Callable, classnames: Sequence[str],
                        templates: Sequence, pooling: str = "texts") -> Tensor:
    """Normalised class text features ``[C, D]`` from templates and class descriptions.

    Templates only (format strings): the normalised mean over templates of the normalised prompt features (CLIP's
    prompt ensemble). With :class:`~tasks.classification.datasets.base.ClassDescriptions` among ``templates``, a
    class's texts are its templates' prompts plus its sentences, each feature normalised, and ``pooling`` says
    how they combine: ``"texts"``: the normalised mean of all of them (CuPL, DPE, DMN); ``"groups"``: the
    normalised mean of the templates' mean and the sentences' mean (TPS's "micro" prototypes).
    """
    if pooling not in POOLINGS:
        raise ValueError(f"pooling must be one of {POOLINGS}, got {pooling!r}")
    plain = [t for t in templates if not isinstance(t, ClassDescriptions)]
    described = [t for t in templates if isinstance(t, ClassDescriptions)]
    if not described:
        feats = torch.stack([encode_texts(clip, tokenizer(class_prompts(classnames, t))) for t in plain]).mean(0)
        return F.normalize(feats, dim=-1)
    for d in described:
        d.check(classnames)
    texts, spans = [], []
    for name in classnames:
        words = name.replace("_", " ")
        own = [t.format(words) if isinstance(t, str) else t(words) for t in plain]
        sentences = [x for d in described for x in d(name)]
        spans.append((len(texts), len(own), len(sentences)))
        texts += own + sentences
    feats = encode_texts(clip, tokenizer(texts))
    out = []
    for start, n_own, n_sent in spans:
        own, sent = feats[start:start + n_own], feats[start + n_own:start + n_own + n_sent]
        if pooling == "texts" or n_own == 0:
            out.append(torch.cat([own, sent]).mean(0))
        else:
            out.append((own.mean(0) + sent.mean(0)) / 2)
    return F.normalize(torch.stack(out), dim=-1)


def context_of_template(template: str) -> str:
    """``"a photo of a {}."`` -> ``"a photo of a"``: the words a prompt-tuning context starts from."""
    if not template.endswith("{}.") or template.count("{}") != 1 or not template[:-3].strip():
        raise ValueError(f"a prompt-tuning template must be '<words> {{}}.' (the context, then the class name and a "
                         f"period), got {template!r}")
    return template[:-3].strip()


class _ClipPolicy(DiscretePolicy):
    query_trainable: bool = False

    def __init__(self, clip: nn.Module) -> None:
        super().__init__()
        self.clip = clip

    def trainable_parameters(self) -> dict[str, nn.Parameter]:
        raise NotImplementedError

    def encode_query(self, images: Tensor) -> Tensor:
        """``[B, 3, H, W]`` -> normalised image features ``[B, D]``."""
        if images.dim() != 4 or images.shape[1] != 3:
            raise ValueError(f"images must be [B, 3, H, W], got {tuple(images.shape)}")
        if not images.is_floating_point():
            raise TypeError(f"images must be a float tensor (normalised pixels), got {images.dtype}")
        return F.normalize(self.clip.encode_image(images).float(), dim=-1)

    def class_features(self) -> Tensor:
        raise NotImplementedError

    def logits(self, q: Tensor, class_feats: Tensor | None = None) -> Tensor:  # type: ignore[override]
        """``[B, D]`` normalised image features -> ``[B, C]`` logits (``class_feats``: reuse ``[C, D]``)."""
        feats = self.class_features() if class_feats is None else class_feats
        return self.clip.logit_scale.exp().float() * q.float() @ feats.t()


class PromptPolicy(_ClipPolicy):
    """CoOp-style learnable context (the prompt is the only trainable parameter).

    Prompt of class c: ``[SOS] ctx_1 .. ctx_n {name_c}. [EOS]``, ctx initialised from the token
    embeddings of ``ctx_init`` (``"a photo of a"``, n_ctx = 4) or N(0, 0.02) when ``ctx_init`` is
    ``None``. A causal text tower runs only up to the longest prompt, in chunks of ``text_chunk``.
    Tokenizers without a start token (SigLIP's) put the context first; bidirectional towers (SigLIP)
    read their features at the last position, so there the full context runs (no truncation).

    Args:
        clip: an open_clip ``CLIP`` / ``CustomTextCLIP`` or an HF wrapper (:mod:`tasks.common.hf_clip`), frozen.
        classnames: C class names.
        tokenizer: open_clip tokenizer.
        n_ctx: context length when ``ctx_init`` is ``None``.
        ctx_init: words initialising the context (their token count sets n_ctx).
        text_chunk: classes per text-tower chunk (``None``: all at once).
        truncate: run the text tower only up to the longest prompt (exact; see module docs).
        template: the class prompt as the other APIs take it (``"a photo of a {}."``, as
            ``EncoderPolicy(template=)`` and ``class_prompts(template=)``): sets ``ctx_init`` to the words
            before ``{}``; it must end in ``{}.`` (the learnable context is always followed by ``{name}.``).
    """

    query_trainable = False

    def __init__(self, clip: nn.Module, classnames: Sequence[str], tokenizer: Callable, n_ctx: int = 4,
                 ctx_init: str | None = "a photo of a", text_chunk: int | None = None, truncate: bool = True,
                 template: str | None = None) -> None:
        super().__init__(clip)
        if template is not None:
            ctx_init = context_of_template(template)
        self.tower = tower = text_tower(clip)
        device = next(clip.parameters()).device
        with torch.no_grad():
            empty = tower.token_embedding(tokenizer([""]).to(device))
            width = empty.shape[-1]
            self.n_prefix = int(tower.end_index(tokenizer([""]).to(device))[0])   # 1: [SOS]; 0: none (SigLIP)
            if ctx_init:
                ctx_init = ctx_init.replace("_", " ")
                init_tok = tokenizer([ctx_init]).to(device)
                n_ctx = int(tower.end_index(init_tok)[0]) - self.n_prefix
                ctx = tower.token_embedding(init_tok)[0, self.n_prefix:self.n_prefix + n_ctx].clone()
                prefix_text = ctx_init
            else:
                ctx = torch.randn(n_ctx, width, device=device) * 0.02
                prefix_text = " ".join(["X"] * n_ctx)
        self.n_ctx, self.prompt_prefix, self.tokenizer = n_ctx, prefix_text, tokenizer
        self.text_chunk, self.truncate = text_chunk, truncate
        self.ctx = nn.Parameter(ctx.float())
        self.set_classnames(classnames)

    def trainable_parameters(self) -> dict[str, nn.Parameter]:
        """The context vectors only."""
        return {"ctx": self.ctx}

    def set_classnames(self, classnames: Sequence[str]) -> None:
        """(Re)build the frozen prefix/suffix token embeddings for a new class list."""
        prompts = class_prompts(classnames, self.prompt_prefix + " {}.")
        tower = self.tower
        tokens = self.tokenizer(prompts).to(next(self.clip.parameters()).device)
        eot = tower.pool_index(tokens)
        length = int(eot.max()) + 1 if self.truncate and tower.causal else tokens.shape[1]
        with torch.no_grad():
            emb = tower.token_embedding(tokens[:, :length])
        self.classnames = list(classnames)
        self.tokenized_prompts = tokens
        p = self.n_prefix
        self.register_buffer("token_prefix", emb[:, :p].clone(), persistent=False)
        self.register_buffer("token_suffix", emb[:, p + self.n_ctx:].clone(), persistent=False)
        self.register_buffer("eot", eot, persistent=False)

    def load_coop(self, path: str) -> None:
        """Load CoOp context vectors (``state_dict['ctx']`` or ``prompt_learner.ctx``) as the new initial ctx."""
        ckpt = torch.load(path, map_location="cpu", weights_only=False)
        sd = ckpt.get("state_dict", ckpt) if isinstance(ckpt, dict) else ckpt
        key = next((k for k in ("ctx", "prompt_learner.ctx") if k in sd), None)
        if key is None:
            raise KeyError(f"no 'ctx' or 'prompt_learner.ctx' in CoOp checkpoint '{path}' (keys: {list(sd)[:10]})")
        ctx = sd[key]
        if tuple(ctx.shape) != tuple(self.ctx.shape):
            raise ValueError(f"CoOp ctx in '{path}' has shape {tuple(ctx.shape)}, policy expects {tuple(self.ctx.shape)}")
        with torch.no_grad():
            self.ctx.copy_(ctx)

    def class_features(self, ctx: Tensor | None = None) -> Tensor:
        """Normalised class text features ``[C, D]`` (with grad through ``ctx``); a stacked context
        ``ctx [B, n_ctx, W]`` gives ``[B * C, D]`` (sample-major) from one text pass over the ``B x C`` prompts."""
        ctx = self.ctx.unsqueeze(0) if ctx is None else ctx
        b, c = ctx.shape[0], self.token_prefix.shape[0]
        ctx = ctx.to(self.token_prefix.dtype).unsqueeze(1).expand(-1, c, -1, -1).flatten(0, 1)   # [B*C, n_ctx, W]
        pre, suf, eot = ((self.token_prefix, self.token_suffix, self.eot) if b == 1 else
                         (self.token_prefix.repeat(b, 1, 1), self.token_suffix.repeat(b, 1, 1), self.eot.repeat(b)))
        emb = torch.cat([pre, ctx, suf], dim=1)
        return F.normalize(self.tower.features_from_embeddings(emb, eot, self.text_chunk).float(), dim=-1)

    def forward_stacked(self, params: dict[str, Tensor], x: Tensor | None = None, *,
                        query: Tensor | None = None) -> Tensor:
        """``[B, S, C]`` logits of B contexts ``params["ctx"] [B, n_ctx, W]`` for frozen query features
        ``query [B, S, D]``: one text pass over the ``B x C`` prompts, no vmap (see the base class)."""
        if x is not None or set(params) != {"ctx"}:
            return super().forward_stacked(params, x, query=query)
        b = params["ctx"].shape[0]
        feats = self.class_features(params["ctx"]).view(b, -1, query.shape[-1])
        return self.clip.logit_scale.exp().float() * query.float() @ feats.transpose(1, 2)   # as logits(): (s * q) @ f


class EncoderPolicy(_ClipPolicy):
    """Image-encoder tuning: the visual tower trainable, class text features cached once.

    Args:
        clip: open_clip ``CLIP``.
        classnames: C class names.
        tokenizer: open_clip tokenizer.
        template: class prompt template (official ``"a photo of a {}."``).
        norm_only: train only the visual tower's normalisation layers (official ``--tune_norm``).
        templates: several templates: class features are the normalised mean of the normalised
            per-template features (CLIP's prompt ensemble); overrides ``template``. Class descriptions
            files among them add their sentences (:func:`class_text_features`).
    """

    query_trainable = True

    def __init__(self, clip: nn.Module, classnames: Sequence[str], tokenizer: Callable,
                 template: str = "a photo of a {}.", norm_only: bool = False,
                 templates: Sequence[str] | None = None) -> None:
        super().__init__(clip)
        self.tokenizer = tokenizer
        self.templates = list(templates) if templates else [template]
        self.norm_only = norm_only
        self.set_classnames(classnames)

    def trainable_parameters(self) -> dict[str, nn.Parameter]:
        """The whole visual tower (official), or only its normalisation layers (``norm_only``)."""
        if not self.norm_only:
            return {f"clip.visual.{n}": p for n, p in self.clip.visual.named_parameters()}
        norms = (nn.LayerNorm, nn.BatchNorm2d, nn.GroupNorm)
        return {f"clip.visual.{m}.{n}": p for m, mod in self.clip.visual.named_modules() if isinstance(mod, norms)
                for n, p in mod.named_parameters(recurse=False)}

    def set_classnames(self, classnames: Sequence[str]) -> None:
        feats = class_text_features(self.clip, self.tokenizer, classnames, self.templates)
        self.classnames = list(classnames)
        self.register_buffer("text_feats", feats, persistent=False)

    def class_features(self) -> Tensor:
        return self.text_feats

    def train(self, mode: bool = True) -> "EncoderPolicy":
        """Only the visual tower follows ``mode``; the frozen text side stays in eval."""
        super().train(False)
        self.clip.visual.train(mode)
        self.training = mode
        return self


class PrototypePolicy(_ClipPolicy):
    """Cached class prototypes with a learnable per-class shift (TPS, Sui et al. 2024): the image tower and the text
    classifier stay frozen; the class features are ``normalize(P + shift)``, ``P`` the normalised class text features
    computed once (:func:`class_text_features`) and ``shift`` ``[C, D]`` zero at the reset point. No text pass at
    test time.

    Args:
        clip: open_clip ``CLIP`` (or an HF wrapper), frozen.
        classnames: C class names.
        tokenizer: its tokenizer.
        template: the class prompt when ``templates`` is not given.
        templates: templates and class descriptions files (:func:`class_text_features`).
        pooling: how a class's templates and descriptions pool (``"texts"`` or ``"groups"``).
    """

    query_trainable = False

    def __init__(self, clip: nn.Module, classnames: Sequence[str], tokenizer: Callable,
                 template: str = "a photo of a {}.", templates: Sequence | None = None, pooling: str = "texts") -> None:
        super().__init__(clip)
        self.tokenizer, self.pooling = tokenizer, pooling
        self.templates = list(templates) if templates else [template]
        self.set_classnames(classnames)

    def trainable_parameters(self) -> dict[str, nn.Parameter]:
        """The per-class shift only."""
        return {"shift": self.shift}

    def set_classnames(self, classnames: Sequence[str]) -> None:
        """New prototypes and a zero shift for a new class list (build the method after it)."""
        feats = class_text_features(self.clip, self.tokenizer, classnames, self.templates, self.pooling)
        self.classnames = list(classnames)
        self.register_buffer("prototypes", feats, persistent=False)
        self.shift = nn.Parameter(torch.zeros_like(feats))

    def class_features(self) -> Tensor:
        """``normalize(P + shift)``: ``[C, D]`` (with grad through the shift)."""
        return F.normalize(self.prototypes + self.shift, dim=-1)
