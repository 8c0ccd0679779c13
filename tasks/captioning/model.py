"""ClipCap / CapDec prefix captioner: a CLIP embedding -> mapper -> prefix of a causal LM (OPT).

The model (ClipCap's "transformer" variant with a frozen LM, as in the official RLCF code):

* input: an L2-normalised CLIP embedding ``[B, D]`` (image for ClipCap; text plus Gaussian noise
  during CapDec training, image at test time);
* :class:`TransformerMapper`: ``Linear(D -> C*E)`` gives ``C`` "CLIP tokens", concatenated with
  ``P`` learned constants; an ``N``-layer pre-LN transformer (no causal mask, ReLU MLP of ratio 2,
  no dropout); the outputs at the ``P`` constant positions are the prefix ``[B, P, E]``
  (official: ``C = P = 40``, ``N = 8``, 8 heads). :class:`MLPMapper` is ClipCap's MLP option;
* the LM (``transformers.OPTForCausalLM``, frozen) reads ``[prefix ; BOS ; caption ; stop]``.

Token layout of a caption (``ids [B, L]``): ``[BOS, w_1 .. w_n, STOP, PAD ...]``; the loss and
the sequence log-probability cover ``w_1 .. STOP`` (never BOS, never padding). ``STOP`` is the
stop token of generation (official OPT: the ``"\\n"`` token; configurable).

Training targets, official vs here: the official ``train.py`` encodes ``[BOS, w_1 .. w_n]`` (no stop
token), pads with 0 and takes ``cross_entropy(ignore_index=0)`` over ``logits[:, P - 1 : -1]``, i.e.
over the BOS target (predicted from the last prefix slot) and the words; it never shows the model a
caption end, so generation stops at a ``"\\n"`` the LM happens to emit or at 50 tokens. Here training
covers ``w_1 .. STOP``: the model learns to stop, BOS is given, not predicted. The official *TTA*
token loss is available as :meth:`PrefixCaptioner.official_tta_logprob`.
"""
from __future__ import annotations

import logging
import warnings
from dataclasses import asdict, dataclass, fields
from typing import Any, Sequence

import torch
import torch.nn.functional as F
from torch import Tensor, nn

logger = logging.getLogger(__name__)

__all__ = ["CaptionerConfig", "TransformerMapper", "MLPMapper", "PrefixCaptioner", "noise_injection"]


@dataclass
class CaptionerConfig:
    """Architecture and decoding options of :class:`PrefixCaptioner` (defaults: official RLCF).

    Attributes:
        prefix_dim: CLIP embedding size ``D`` (512 for ViT-B/16).
        prefix_length: number ``P`` of prefix embeddings fed to the LM (learned constants).
        clip_length: number ``C`` of tokens the CLIP embedding is projected to (transformer mapper).
        num_layers, num_heads, mlp_ratio: mapper transformer (8, 8, 2.0).
        mapping_type: ``"transformer"`` (official) or ``"mlp"`` (ClipCap's MLP mapper).
        normalize_prefix: L2-normalise the CLIP embedding before the mapper (official on).
        noise_variance: CapDec training noise variance (0.016); 0 for ClipCap. Training only.
        stop_token: text of the stop token (``"\\n"`` for OPT); ``None`` uses the tokenizer's EOS.
        max_new_tokens, min_new_tokens: generation length limits (official 50; min 1 avoids empty captions).
        length_penalty: beam-search length penalty (HF default 1.0, as the official code).
        top_p, temperature: nucleus sampling options (official 0.92, 1.0).
    """

    prefix_dim: int = 512
    prefix_length: int = 40
    clip_length: int = 40
    num_layers: int = 8
    num_heads: int = 8
    mlp_ratio: float = 2.0
    mapping_type: str = "transformer"
    normalize_prefix: bool = True
    noise_variance: float = 0.0
    stop_token: str | None = "\n"
    max_new_tokens: int = 50
    min_new_tokens: int = 1
    length_penalty: float = 1.0
    top_p: float = 0.92
    temperature: float = 1.0

    def __post_init__(self) -> None:
        if self.mapping_type not in ("transformer", "mlp"):
            raise ValueError(f"mapping_type must be 'transformer' or 'mlp', got '{self.mapping_type}'")

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> "CaptionerConfig":
        names = {f.name for f in fields(cls)}
        return cls(**{k: v for k, v in d.items() if k in names})

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def noise_injection(x: Tensor, variance: float, generator: torch.Generator | None = None) -> Tensor:
    """CapDec: ``normalize(normalize(x) + N(0, variance))`` for ``[B, D]`` embeddings."""
    x = F.normalize(x.float(), dim=-1)
    if variance <= 0:
        return x
    noise = torch.randn(x.shape, generator=generator, device="cpu" if generator is not None else x.device)
    return F.normalize(x + noise.to(x.device) * variance ** 0.5, dim=-1)


class TransformerMapper(nn.Module):
    """CLIP embedding ``[B, D]`` -> prefix ``[B, P, E]`` (ClipCap transformer mapper)."""

    def __init__(self, dim_clip: int, dim_embed: int, prefix_length: int, clip_length: int,
                 num_layers: int = 8, num_heads: int = 8, mlp_ratio: float = 2.0) -> None:
        super().__init__()
        self.clip_length = clip_length
        self.linear = nn.Linear(dim_clip, clip_length * dim_embed)
        self.prefix_const = nn.Parameter(torch.randn(prefix_length, dim_embed))
        layer = nn.TransformerEncoderLayer(dim_embed, num_heads, int(dim_embed * mlp_ratio), dropout=0.0,
                                           activation="relu", batch_first=True, norm_first=True)
        self.transformer = nn.TransformerEncoder(layer, num_layers, enable_nested_tensor=False)

    def forward(self, x: Tensor) -> Tensor:
        b = x.shape[0]
        clip_tokens = self.linear(x).view(b, self.clip_length, -1)
        const = self.prefix_const.unsqueeze(0).expand(b, -1, -1)
        return self.transformer(torch.cat([clip_tokens, const], dim=1))[:, self.clip_length:]


class MLPMapper(nn.Module):
    """ClipCap's MLP mapper: ``Linear(D, P*E/2) -> Tanh -> Linear(P*E)``, reshaped to ``[B, P, E]``."""

    def __init__(self, dim_clip: int, dim_embed: int, prefix_length: int) -> None:
        super().__init__()
        self.prefix_length = prefix_length
        hidden = dim_embed * prefix_length
        self.model = nn.Sequential(nn.Linear(dim_clip, hidden // 2), nn.Tanh(), nn.Linear(hidden // 2, hidden))

    def forward(self, x: Tensor) -> Tensor:
        return self.model(x).view(x.shape[0], self.prefix_length, -1)


def build_mapper(cfg: CaptionerConfig, dim_embed: int) -> nn.Module:
    if cfg.mapping_type == "mlp":
        return MLPMapper(cfg.prefix_dim, dim_embed, cfg.prefix_length)
    return TransformerMapper(cfg.prefix_dim, dim_embed, cfg.prefix_length, cfg.clip_length, cfg.num_layers,
                             cfg.num_heads, cfg.mlp_ratio)


class PrefixCaptioner(nn.Module):
    """Mapper + causal LM + tokenizer.

    Args:
        config: architecture and decoding options.
        lm: a ``transformers`` causal LM (``OPTForCausalLM``) accepting ``inputs_embeds``.
        tokenizer: its tokenizer (needs ``pad_token_id`` and a BOS token; see :attr:`bos_id`).
        train_lm: keep the LM trainable (only for a tiny randomly initialised LM, as in the
            embedded world); by default it is frozen (``requires_grad=False``, always in eval mode).
    """

    def __init__(self, config: CaptionerConfig, lm: nn.Module, tokenizer: Any, train_lm: bool = False) -> None:
        super().__init__()
        self.config = config
        self.lm = lm
        self.tokenizer = tokenizer
        self.embed_dim = int(lm.get_input_embeddings().weight.shape[1])
        self.mapper = build_mapper(config, self.embed_dim)
        self.train_lm = train_lm
        self.lm.requires_grad_(train_lm)
        self.lm.eval()
        self.bos_id = tokenizer.bos_token_id if tokenizer.bos_token_id is not None else tokenizer.eos_token_id
        if self.bos_id is None:
            raise ValueError("the tokenizer has neither a BOS nor an EOS token to start captions with")
        self.configure()
        self.pad_id = int(tokenizer.pad_token_id if tokenizer.pad_token_id is not None else self.stop_id)

    def configure(self, **options: Any) -> "PrefixCaptioner":
        """Change decoding options of the config (e.g. ``max_new_tokens``, ``stop_token``) and re-resolve
        the stop token id (it must be a single token of the tokenizer)."""
        for k, v in options.items():
            if not hasattr(self.config, k):
                raise KeyError(f"unknown captioner option '{k}'")
            setattr(self.config, k, v)
        stop = self.config.stop_token
        if stop is None:
            self.stop_id = int(self.tokenizer.eos_token_id)
        else:
            ids = self.tokenizer(stop, add_special_tokens=False).input_ids
            if len(ids) != 1:
                raise ValueError(f"stop token {stop!r} is {len(ids)} tokens for this tokenizer, need 1")
            self.stop_id = int(ids[0])
        return self

    # ------------------------------------------------------------------ modes
    def train(self, mode: bool = True) -> "PrefixCaptioner":
        super().train(mode)
        if not self.train_lm:
            self.lm.eval()
        return self

    @property
    def device(self) -> torch.device:
        return next(self.mapper.parameters()).device

    # ------------------------------------------------------------- encoding
    def prefix(self, emb: Tensor) -> Tensor:
        """CLIP embeddings ``[B, D]`` -> prefix embeddings ``[B, P, E]`` (with grad through the mapper)."""
        emb = emb.to(self.device, torch.float32)
        if self.config.normalize_prefix:
            emb = F.normalize(emb, dim=-1)
        return self.mapper(emb)

    def encode_captions(self, captions: Sequence[str], max_tokens: int | None = None) -> tuple[Tensor, Tensor]:
        """Captions -> ``ids [B, L]`` = ``[BOS, tokens.., STOP, PAD..]`` and ``mask [B, L]`` (1 on real tokens).

        Args:
            captions: raw caption strings (not lower-cased here).
            max_tokens: cut the caption tokens to this many (before STOP); ``None`` keeps all.
        """
        return self.pack(self.tokenizer(list(captions), add_special_tokens=False).input_ids, max_tokens)

    def pack(self, token_lists: Sequence[Sequence[int]], max_tokens: int | None = None,
             add_stop: bool = True) -> tuple[Tensor, Tensor]:
        """Token id lists (no special tokens) -> ``ids [B, L]``, ``mask [B, L]`` as :meth:`encode_captions`.

        Args:
            max_tokens: cut each list to this many tokens first (``None``: keep all).
            add_stop: append STOP (training targets). ``False`` packs ``[BOS] + tokens`` as given, e.g. generated
                ids that already end with STOP when the model ended them (RL rollouts).
        """
        stop = [self.stop_id] if add_stop else []
        seqs = [[self.bos_id] + list(t[:max_tokens] if max_tokens is not None else t) + stop for t in token_lists]
        length = max(len(s) for s in seqs)
        ids = torch.full((len(seqs), length), self.pad_id, dtype=torch.long)
        mask = torch.zeros((len(seqs), length), dtype=torch.long)
        for i, s in enumerate(seqs):
            ids[i, :len(s)] = torch.tensor(s, dtype=torch.long)
            mask[i, :len(s)] = 1
        return ids.to(self.device), mask.to(self.device)

    def _embed(self, prefix: Tensor, ids: Tensor) -> Tensor:
        tok = self.lm.get_input_embeddings()(ids)
        return torch.cat([prefix.to(tok.dtype), tok], dim=1)

    def _forward(self, prefix: Tensor, ids: Tensor, mask: Tensor, hidden: bool = False) -> tuple[Tensor, Tensor | None]:
        p = prefix.shape[1]
        att = torch.cat([torch.ones(mask.shape[0], p, dtype=mask.dtype, device=mask.device), mask], dim=1)
        out = self.lm(inputs_embeds=self._embed(prefix, ids), attention_mask=att, use_cache=False,
                      output_hidden_states=hidden)
        return out.logits[:, p:-1].float(), (out.hidden_states[-1][:, p:-1] if hidden else None)

    def logits(self, prefix: Tensor, ids: Tensor, mask: Tensor) -> Tensor:
        """LM logits ``[B, L-1, V]`` predicting ``ids[:, 1:]`` given ``[prefix ; ids]``.

        The attention mask covers the ``P`` prefix positions and the real tokens (``mask``).
        """
        return self._forward(prefix, ids, mask)[0]

    def forward_tokens(self, emb: Tensor | None, ids: Tensor, mask: Tensor, *, prefix: Tensor | None = None,
                       hidden: bool = False) -> tuple[Tensor, Tensor | None]:
        """Teacher-forced log-probs of ``ids[:, 1:]`` given ``[prefix ; ids]`` (with grad where the model has it).

        Args:
            emb: ``[B, D]`` CLIP embeddings (ignored when ``prefix`` is given).
            ids, mask: ``[B, L]`` as :meth:`pack`.
            prefix: a precomputed ``[B, P, E]`` prefix (e.g. detached, for a value-only forward).
            hidden: also return the LM's last hidden states ``[B, L-1, H]`` at the positions predicting
                ``ids[:, 1:]`` (a value head's input).
        Returns:
            ``(logp [B, L-1] (0 on padding), hidden or None)``.
        """
        prefix = self.prefix(emb) if prefix is None else prefix
        logits, hid = self._forward(prefix, ids, mask, hidden)
        logp = torch.log_softmax(logits, dim=-1).gather(-1, ids[:, 1:, None]).squeeze(-1)
        return logp * mask[:, 1:].to(logp.dtype), hid

    def token_logprobs(self, emb: Tensor, ids: Tensor, mask: Tensor) -> tuple[Tensor, Tensor]:
        """Teacher-forced log-probs ``[B, L-1]`` of ``ids[:, 1:]`` and their validity mask ``[B, L-1]``
        (pads excluded). ``emb`` is the ``[B, D]`` CLIP embedding."""
        logp, _ = self.forward_tokens(emb, ids, mask)
        return logp, mask[:, 1:].to(logp.dtype)

    def loss(self, emb: Tensor, ids: Tensor, mask: Tensor) -> Tensor:
        """Training loss: token cross-entropy over the real caption tokens and STOP (pads -> -100)."""
        logits = self.logits(self.prefix(emb), ids, mask)
        labels = ids[:, 1:].masked_fill(mask[:, 1:] == 0, -100)
        return F.cross_entropy(logits.reshape(-1, logits.shape[-1]), labels.reshape(-1), ignore_index=-100)

    def official_tta_logprob(self, emb: Tensor, captions: Sequence[str], ignore_index: int = 0) -> Tensor:
        """Per-caption score ``[B]`` of the official RLCF caption TTA loss (``caption/capdec_tta.py``).

        Official: ``tokenizer(captions, padding=True)`` gives ``[BOS, w_1 .. w_n, PAD ...]`` with no
        stop token; the logits ``outputs.logits[:, P - 1 : -1]`` predict all ``L`` positions, the BOS
        one included; ``cross_entropy(..., ignore_index=0, reduction="none")`` is averaged over the
        padded length ``L``. OPT's pad id is 1, not 0, so the pad targets of the shorter captions stay in
        the mean (and are trained). The returned score is minus that per-caption loss, so that the
        method's ``-mean(adv * score)`` equals the official ``mean(rewards * per_caption_loss)``.
        """
        ids, mask = self.pack(self.tokenizer(list(captions), add_special_tokens=False).input_ids, add_stop=False)
        length = ids.shape[1]
        prefix = self.prefix(emb)
        p = prefix.shape[1]
        att = torch.cat([torch.ones(mask.shape[0], p, dtype=mask.dtype, device=mask.device), mask], dim=1)
        out = self.lm(inputs_embeds=self._embed(prefix, ids), attention_mask=att, use_cache=False)
        logits = out.logits[:, p - 1:-1].float()
        logp = torch.log_softmax(logits, dim=-1).gather(-1, ids[..., None]).squeeze(-1)
        return (logp * (ids != ignore_index).to(logp.dtype)).sum(-1) / length

    def mean_logprob(self, emb: Tensor, captions: Sequence[str]) -> Tensor:
        """Per-caption MEAN token log-prob ``[B]`` (differentiable through the mapper; pads excluded)."""
        ids, mask = self.encode_captions(captions)
        logp, valid = self.token_logprobs(emb, ids, mask)
        return logp.sum(-1) / valid.sum(-1).clamp(min=1)

    # ------------------------------------------------------------- decoding
    def cut_at_stop(self, row: Sequence[int]) -> list[int]:
        """Generated ids up to and including the first STOP (all of them when there is none)."""
        row = list(row)
        return row[:row.index(self.stop_id) + 1] if self.stop_id in row else row

    def decode_tokens(self, token_lists: Sequence[Sequence[int]]) -> list[str]:
        """Generated ids -> stripped captions (cut at the first STOP; special tokens and the stop text removed)."""
        out = []
        for row in token_lists:
            row = self.cut_at_stop(row)
            text = self.tokenizer.decode([t for t in row if t != self.stop_id], skip_special_tokens=True)
            if self.config.stop_token:
                text = text.split(self.config.stop_token)[0]
            out.append(text.strip())
        return out

    @torch.no_grad()
    def generate(self, emb: Tensor, num_return_sequences: int = 1, num_beams: int | None = None,
                 do_sample: bool = False, *, top_k: int | None = None, top_p: float | None = None,
                 temperature: float | None = None, no_repeat_ngram_size: int = 0, min_new_tokens: int | None = None,
                 max_new_tokens: int | None = None, bad_words_ids: Sequence[Sequence[int]] | None = None,
                 return_tokens: bool = False) -> list[list[str]] | tuple[list[list[str]], list[list[list[int]]]]:
        """Decode captions for ``[B, D]`` CLIP embeddings with ``transformers`` ``generate`` (KV cache).

        Args:
            emb: ``[B, D]`` CLIP embeddings.
            num_return_sequences: captions per row ``K``.
            num_beams: beam width (default ``K``; 1 = greedy); ignored when sampling.
            do_sample: sampling instead of beams: nucleus (``top_p``, ``temperature`` from the config) unless the
                options below say otherwise.
            top_k, top_p, temperature: sampling options (``None``: top-k off, the config's ``top_p`` and
                ``temperature``).
            no_repeat_ngram_size: forbid repeating any n-gram of the generated tokens (0: off).
            min_new_tokens, max_new_tokens: length limits (``None``: the config's).
            bad_words_ids: token id sequences never generated (``transformers``' bad-words filter).
            return_tokens: also return the exact generated ids of each caption, cut after the first STOP
                (STOP included when the model ended the caption).
        Returns:
            ``B`` lists of ``K`` stripped captions (case kept), beam order (best first); with ``return_tokens``,
            ``(captions, tokens)`` where ``tokens`` is ``B`` lists of ``K`` id lists.
        """
        from transformers import GenerationConfig

        cfg = self.config
        k = num_return_sequences
        gen = GenerationConfig(
            do_sample=do_sample, num_beams=1 if do_sample else (num_beams or k), num_return_sequences=k,
            top_p=(cfg.top_p if top_p is None else top_p) if do_sample else 1.0,
            top_k=(top_k or 0) if do_sample else 50,
            temperature=cfg.temperature if temperature is None else temperature,
            no_repeat_ngram_size=no_repeat_ngram_size or None,
            bad_words_ids=[list(b) for b in bad_words_ids] if bad_words_ids else None,
            max_new_tokens=cfg.max_new_tokens if max_new_tokens is None else max_new_tokens,
            min_new_tokens=cfg.min_new_tokens if min_new_tokens is None else min_new_tokens,
            length_penalty=cfg.length_penalty, eos_token_id=self.stop_id, pad_token_id=self.pad_id,
            bos_token_id=self.bos_id, use_cache=True)
        was_training = self.training
        self.eval()
        try:
            prefix = self.prefix(emb)
            b = prefix.shape[0]
            bos = torch.full((b, 1), self.bos_id, dtype=torch.long, device=prefix.device)
            embeds = self._embed(prefix, bos)
            att = torch.ones(embeds.shape[:2], dtype=torch.long, device=prefix.device)
            with warnings.catch_warnings():   # n-gram blocking sees the generated tokens only: what we want
                warnings.filterwarnings("ignore", message=".*no_repeat_ngram_size.*inputs_embeds.*")
                seqs = self.lm.generate(inputs_embeds=embeds, attention_mask=att, generation_config=gen)
        finally:
            self.train(was_training)
        tokens = [self.cut_at_stop(row) for row in seqs.tolist()]
        texts = self.decode_tokens(tokens)
        out = [texts[i * k:(i + 1) * k] for i in range(b)]
        if return_tokens:
            return out, [tokens[i * k:(i + 1) * k] for i in range(b)]
        return out
