"""VLRM per-token return: bad-phrase, year, repeated-word and no-EOS penalties (Dzabraev et al. 2024, eq. 1).

For a generated caption ``t_1 .. t_n`` (``t_n`` is the stop token when the model ended the caption)::

    R(t_k) = sim(image, text) + ref(text) - noeos - sum_{s >= k} bad(s) - sum_{s >= k} repeat(s)

with discount 1 (Table 1 of the paper is ``tests/test_caption_rl_returns.py``). Penalties are found on the
decoded text and mapped back to tokens through the character span of each token:

* ``bad(s) = 1`` when token ``s`` overlaps an occurrence of a bad phrase (whole words, case-insensitive) or
  of a four-digit number (the year rule, "in 1993");
* ``repeat(s) = 1`` when token ``s`` belongs to a word that already occurred earlier in the text, except
  colours, prepositions and articles (the paper's exceptions; the first occurrence is never penalised).

Tokens are given as their decoded *pieces* (``"an", " image", " of"``), which makes the rules independent of
the tokenizer (:func:`decode_pieces` builds them from token ids).
"""
from __future__ import annotations

import logging
import re
from dataclasses import dataclass, field
from typing import Any, Iterable, Sequence

import torch
from torch import Tensor

from .bad_phrases import VLRM_BAD_PHRASES

logger = logging.getLogger(__name__)

__all__ = ["COLOURS", "PREPOSITIONS", "ARTICLES", "REPEAT_EXCEPTIONS", "PenaltyRules", "token_spans",
           "decode_pieces", "vlrm_returns"]

COLOURS = frozenset(
    "red orange yellow green blue purple violet pink brown black white grey gray silver gold golden beige tan "
    "maroon navy teal turquoise cyan magenta burgundy cream ivory khaki olive lime indigo lavender crimson "
    "scarlet amber bronze copper peach coral charcoal".split())
PREPOSITIONS = frozenset(
    "about above across after against along alongside amid among amongst around as at atop before behind below "
    "beneath beside besides between beyond by despite down during except for from in inside into like near "
    "next of off on onto opposite out outside over past per round since than through throughout till to toward "
    "towards under underneath unlike until up upon via with within without".split())
ARTICLES = frozenset({"a", "an", "the"})
#: Words never counted as repetitions (VLRM: "we don't penalize for repeated colors, prepositions, and articles").
REPEAT_EXCEPTIONS = COLOURS | PREPOSITIONS | ARTICLES

_WORD = re.compile(r"[0-9a-z]+(?:['\u2019-][0-9a-z]+)*")
_YEAR = r"(?<![0-9a-z])\d{4}(?![0-9a-z])"


def _phrase_pattern(phrase: str) -> str:
    """Regex of one phrase: words separated by any whitespace, whole words at alphanumeric ends."""
    p = phrase.strip().lower()
    body = r"\s+".join(re.escape(w) for w in p.split())
    if p[:1].isalnum():
        body = r"(?<![0-9a-z])" + body
    if p[-1:].isalnum():
        body = body + r"(?![0-9a-z])"
    return body


def token_spans(pieces: Sequence[str]) -> list[tuple[int, int]]:
    """Character span ``[start, end)`` of each piece in ``"".join(pieces)``, leading/trailing whitespace
    excluded (an all-whitespace or empty piece, e.g. the stop token, gets an empty span)."""
    spans, pos = [], 0
    for piece in pieces:
        stripped = piece.strip()
        start = pos + (piece.index(stripped) if stripped else len(piece))
        spans.append((start, start + len(stripped)))
        pos += len(piece)
    return spans


def _flag(spans: Sequence[tuple[int, int]], matches: Iterable[tuple[int, int]]) -> list[int]:
    out = [0] * len(spans)
    for c, d in matches:
        for i, (a, b) in enumerate(spans):
            if a < b and a < d and c < b:
                out[i] = 1
    return out


@dataclass
class PenaltyRules:
    """The penalty rules of the VLRM return (all switchable, for ablations).

    Attributes:
        bad_phrases: phrases penalised token by token (default: Table 6 of the paper).
        years: also penalise four-digit numbers ("in 1993").
        repeat_exceptions: words never penalised as repetitions (colours, prepositions, articles).
        bad: apply the bad-phrase (and year) penalty.
        repeat: apply the repeated-word penalty.
    """

    bad_phrases: Sequence[str] = VLRM_BAD_PHRASES
    years: bool = True
    repeat_exceptions: frozenset[str] = REPEAT_EXCEPTIONS
    bad: bool = True
    repeat: bool = True
    _patterns: list[re.Pattern] = field(default_factory=list, init=False, repr=False)

    def __post_init__(self) -> None:
        pats = [_phrase_pattern(p) for p in self.bad_phrases if p.strip()]
        if self.years:
            pats.append(_YEAR)
        self._patterns = [re.compile(p) for p in pats]

    def bad_flags(self, pieces: Sequence[str]) -> list[int]:
        """``[n]`` 0/1: token overlaps a bad phrase or a year (every occurrence, overlapping phrases included)."""
        if not self.bad:
            return [0] * len(pieces)
        text = "".join(pieces).lower()
        matches = [(m.start(), m.end()) for pat in self._patterns for m in pat.finditer(text)]
        return _flag(token_spans(pieces), matches)

    def repeat_flags(self, pieces: Sequence[str]) -> list[int]:
        """``[n]`` 0/1: token belongs to a word already seen earlier in the text (exceptions excluded)."""
        if not self.repeat:
            return [0] * len(pieces)
        text = "".join(pieces).lower()
        seen: set[str] = set()
        repeated = []
        for m in _WORD.finditer(text):
            w = m.group(0)
            if w in seen and w not in self.repeat_exceptions:
                repeated.append((m.start(), m.end()))
            seen.add(w)
        return _flag(token_spans(pieces), repeated)

    def penalties(self, pieces: Sequence[str]) -> tuple[list[int], list[int]]:
        """``(bad [n], repeat [n])`` flags of one caption's pieces."""
        return self.bad_flags(pieces), self.repeat_flags(pieces)

    @classmethod
    def from_config(cls, cfg: dict[str, Any]) -> PenaltyRules:
        """``{"bad": bool, "repeat": bool, "years": bool, "bad_phrases_file": path | None, "extra_bad_phrases": [...],
        "drop_bad_phrases": [...]}`` -> rules (missing keys keep their defaults)."""
        phrases = list(VLRM_BAD_PHRASES)
        if cfg.get("bad_phrases_file"):
            with open(cfg["bad_phrases_file"], encoding="utf-8") as f:
                phrases = [ln.strip() for ln in f if ln.strip() and not ln.startswith("#")]
        drop = {p.lower() for p in cfg.get("drop_bad_phrases") or []}
        phrases = [p for p in phrases + list(cfg.get("extra_bad_phrases") or []) if p.lower() not in drop]
        return cls(bad_phrases=tuple(phrases), years=bool(cfg.get("years", True)), bad=bool(cfg.get("bad", True)),
                   repeat=bool(cfg.get("repeat", True)))


def decode_pieces(tokenizer: Any, ids: Sequence[int]) -> list[str]:
    """Decoded piece of each token: ``decode(ids[:i+1])`` minus ``decode(ids[:i])`` (special tokens skipped,
    so a stop/EOS token is ``""``). Where a prefix does not decode to a prefix of the next (split multi-byte
    characters), the common prefix is used, so the pieces always join to the full decoded text."""
    pieces, prev = [], ""
    for i in range(len(ids)):
        cur = tokenizer.decode(list(ids[:i + 1]), skip_special_tokens=True)
        n = 0
        limit = min(len(prev), len(cur))
        while n < limit and prev[n] == cur[n]:
            n += 1
        if n < len(prev) and pieces:  # the previous pieces changed: rewrite the last one
            pieces[-1] = pieces[-1][:len(pieces[-1]) - (len(prev) - n)]
        pieces.append(cur[n:])
        prev = cur
    return pieces


def vlrm_returns(sim: Tensor, ref: Tensor, noeos: Tensor, penalties: Tensor, mask: Tensor,
                 gamma: float = 1.0) -> Tensor:
    """Per-token returns ``R(t_k)`` of eq. 1 (discount ``gamma``; the paper uses 1).

    The per-token rewards are ``-penalties[k]`` and the terminal reward ``sim + ref - noeos`` is received at
    the last token, so ``R_k = gamma^(n-k) (sim + ref - noeos) - sum_{s>=k} gamma^(s-k) penalties[s]``.

    Args:
        sim: ``[B]`` similarity reward (CLIP / ITM, plus the retrieval term of eq. 5).
        ref: ``[B]`` mean token log-probability under the reference LM (zeros to disable).
        noeos: ``[B]`` 1 when the caption did not end with the stop token.
        penalties: ``[B, N]`` ``bad + repeat`` per token.
        mask: ``[B, N]`` 1 on the generated tokens ``t_1 .. t_n`` (left-aligned, the stop token included).
    Returns:
        ``[B, N]`` returns (0 on padding), float32.
    """
    mask = mask.float()
    pen = penalties.float() * mask
    terminal = (sim.float() + ref.float() - noeos.float())
    b, n = mask.shape
    out = torch.zeros(b, n, dtype=torch.float32, device=mask.device)
    lengths = mask.sum(-1).long()
    running = torch.zeros(b, dtype=torch.float32, device=mask.device)
    for k in range(n - 1, -1, -1):   # backwards over positions: R_k = r_k + gamma * R_{k+1}
        last = (lengths - 1) == k
        running = torch.where(last, terminal, gamma * running) - pen[:, k]
        out[:, k] = running
    return out * mask
