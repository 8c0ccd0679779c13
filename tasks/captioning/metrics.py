"""Caption metrics: COCO metrics (pycocoevalcap), CLIPScore / RefCLIPScore (Hessel et al.), diversity.

* :func:`coco_metrics`: BLEU-1..4, METEOR, ROUGE-L, CIDEr, SPICE via pycocoevalcap's scorers.
  Tokenisation: pycocoevalcap's ``PTBTokenizer`` (Stanford CoreNLP, needs ``java``) when Java is
  available, else :func:`simple_tokenize`, a pure-Python PTB-like tokenizer (scores then differ
  slightly; the result says which one was used). METEOR needs Java. SPICE needs Java and the
  Stanford CoreNLP 3.6.0 jars that pycocoevalcap downloads on first use (impossible offline): it
  is skipped with a logged message when they are missing.
* :func:`clip_scores`: ``CLIP-S = w * max(cos(E_img, E_txt("A photo depicts " + c)), 0)`` with
  ``w = 2.5``; ``RefCLIP-S = HM(CLIP-S, max(max_r cos(E_txt(c), E_txt(r)), 0))``; ViT-B/32 by default.
* :func:`vocab_size`, :func:`self_bleu`: collapse detectors.

Every score is returned x100 (as papers print them: CIDEr 56.6, RefCLIPScore 79.4).
"""
from __future__ import annotations

import logging
import os
import random
import re
import shutil
import sys
import tempfile
from contextlib import contextmanager
from pathlib import Path
from typing import Callable, Iterator, Mapping, Sequence

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from rlcf.reward import clip_score
from tasks.common.logs import log_once

logger = logging.getLogger(__name__)

__all__ = ["simple_tokenize", "tokenize", "coco_metrics", "spice_status", "clip_scores", "ClipScorer",
           "vocab_size", "self_bleu", "PUNCTUATION"]

# pycocoevalcap's PTBTokenizer drops these tokens after tokenising.
PUNCTUATION = {"''", "'", "``", "`", "-LRB-", "-RRB-", "-LCB-", "-RCB-", ".", "?", "!", ",", ":", "-", "--",
               "...", ";"}
_CLITIC = re.compile(r"(?<=[a-z0-9])(n't|'s|'re|'ve|'ll|'d|'m)\b")
_TOKEN = re.compile(r"n't|'[a-z]+|[a-z0-9]+(?:[-./][a-z0-9]+)*|[^\sa-z0-9]")
_DROP = PUNCTUATION | {"(", ")", "[", "]", "{", "}", '"'}


def simple_tokenize(text: str) -> str:
    """Pure-Python stand-in for the PTB tokenizer: lower-case, split off punctuation and clitics
    ("is n't", "man 's"), keep hyphenated words, drop pycocoevalcap's punctuation list (and brackets,
    which PTB turns into -lrb- tokens), join with single spaces."""
    text = text.lower().replace("\n", " ").replace("n't", " n't")
    text = _CLITIC.sub(r" \1", text).replace("  n't", " n't")
    return " ".join(t for t in _TOKEN.findall(text) if t not in _DROP)


def _java() -> bool:
    return shutil.which("java") is not None


@contextmanager
def _quiet_child_stderr() -> Iterator[None]:
    """Route file descriptor 2 to a temporary file for the block: the Java tools pycocoevalcap starts inherit it
    and print e.g. "PTBTokenizer tokenized 46 tokens at 750 tokens per second." on every call. When the block
    fails, what they printed is logged with the error."""
    try:
        sys.stderr.flush()
        saved = os.dup(2)
    except (OSError, ValueError):   # no real stderr (embedded interpreters): nothing to quiet
        yield
        return
    with tempfile.TemporaryFile() as tmp:
        os.dup2(tmp.fileno(), 2)
        try:
            yield
        except BaseException:
            os.dup2(saved, 2)
            tmp.seek(0)
            text = tmp.read().decode(errors="replace").strip()
            if text:
                logger.error("the Java tool printed: %s", text[-2000:])
            raise
        finally:
            os.dup2(saved, 2)
            os.close(saved)


def tokenize(captions: Mapping[str, Sequence[str]], tokenizer: str = "auto") -> tuple[dict[str, list[str]], str]:
    """Tokenise ``{id: [captions]}``; ``tokenizer`` in ``auto``/``ptb``/``simple``. Returns
    ``(tokenised, name_used)``."""
    if tokenizer not in ("auto", "ptb", "simple"):
        raise ValueError(f"tokenizer must be 'auto', 'ptb' or 'simple', got '{tokenizer}'")
    if tokenizer == "ptb" or (tokenizer == "auto" and _java()):
        if not _java():
            raise RuntimeError("the PTB tokenizer needs Java (`java` not on PATH); use tokenizer='simple'")
        from pycocoevalcap.tokenizer.ptbtokenizer import PTBTokenizer

        with _quiet_child_stderr():
            out = PTBTokenizer().tokenize({k: [{"caption": c} for c in v] for k, v in captions.items()})
        return {k: list(v) for k, v in out.items()}, "ptb"
    log_once(logger, logging.WARNING, "caption metrics use the pure-Python fallback tokenizer ('simple'%s): BLEU / "
             "CIDEr / ROUGE differ slightly from pycocoevalcap's PTB tokenizer; results are labelled tokenizer=simple",
             "" if tokenizer == "simple" else ", Java not found")
    return {k: [simple_tokenize(c) for c in v] for k, v in captions.items()}, "simple"


def spice_status() -> tuple[bool, str]:
    """``(available, reason)`` for SPICE (Java plus the Stanford CoreNLP 3.6.0 jars)."""
    if not _java():
        return False, "SPICE needs Java (`java` not on PATH)"
    import pycocoevalcap.spice.spice as sp

    lib = Path(sp.__file__).parent / "lib"
    jars = [lib / "stanford-corenlp-3.6.0.jar", lib / "stanford-corenlp-3.6.0-models.jar"]
    missing = [str(j) for j in jars if not j.is_file()]
    if missing:
        return False, ("SPICE needs Stanford CoreNLP 3.6.0, which pycocoevalcap downloads from nlp.stanford.edu on "
                       f"first use (not possible offline). Put {', '.join(missing)} there (from "
                       "stanford-corenlp-full-2015-12-09.zip) to enable it; it also needs Java 8 (Java >= 9 fails "
                       "with InaccessibleObjectException, tylin/coco-caption#59)")
    return True, "ok"


def coco_metrics(references: Mapping[str, Sequence[str]], candidates: Mapping[str, str], tokenizer: str = "auto",
                 meteor: bool | str = "auto", spice: bool | str = "auto",
                 pretokenized: bool = False) -> dict[str, float | str | list[str]]:
    """Corpus-level COCO caption metrics (x100).

    Args:
        references: ``{id: [reference captions]}``.
        candidates: ``{id: caption}`` (same ids).
        tokenizer: ``auto`` (PTB if Java, else simple), ``ptb`` or ``simple``.
        meteor, spice: ``True``/``False``/``"auto"`` (when the runtime needs are met).
        pretokenized: inputs are already tokenised (no tokenizer run).
    Returns:
        ``{"BLEU-1".."BLEU-4", "METEOR", "ROUGE-L", "CIDEr", "SPICE"?, "tokenizer", "skipped"}``.
    """
    from pycocoevalcap.bleu.bleu import Bleu
    from pycocoevalcap.cider.cider import Cider
    from pycocoevalcap.rouge.rouge import Rouge

    ids = sorted(candidates)
    if set(ids) != set(references):
        raise ValueError("references and candidates must have the same ids")
    if pretokenized:
        gts = {i: list(references[i]) for i in ids}
        res = {i: [candidates[i]] for i in ids}
        used = "pretokenized"
    else:
        both, used = tokenize({**{f"r{i}": list(references[i]) for i in ids},
                               **{f"c{i}": [candidates[i]] for i in ids}}, tokenizer)
        gts = {i: both[f"r{i}"] for i in ids}
        res = {i: both[f"c{i}"] for i in ids}
    # the tokenizer is part of every result: "simple" (the fallback) scores are not the papers' PTB scores
    out: dict[str, float | str | list[str]] = {"tokenizer": used}
    if used == "simple":
        out["tokenizer_warning"] = "fallback tokenizer, not PTB (no Java): scores differ slightly from the papers'"
    skipped: list[str] = []
    bleu, _ = Bleu(4).compute_score(gts, res, verbose=0)
    for n, b in enumerate(bleu, 1):
        out[f"BLEU-{n}"] = 100.0 * float(b)
    if meteor is True or (meteor == "auto" and _java()):
        from pycocoevalcap.meteor.meteor import Meteor

        out["METEOR"] = 100.0 * float(Meteor().compute_score(gts, res)[0])
    elif meteor is not False:
        skipped.append("METEOR (needs Java)")
        log_once(logger, logging.INFO, "METEOR skipped: it needs Java (`java` not on PATH)")
    out["ROUGE-L"] = 100.0 * float(Rouge().compute_score(gts, res)[0])
    out["CIDEr"] = 100.0 * float(Cider().compute_score(gts, res)[0])
    if spice is not False:
        ok, why = spice_status()
        if ok:
            from pycocoevalcap.spice.spice import Spice

            try:
                out["SPICE"] = 100.0 * float(Spice().compute_score(gts, res)[0])
            except Exception as e:  # noqa: BLE001 - SPICE's Java runtime fails in many ways
                skipped.append(f"SPICE ({type(e).__name__})")
                logger.warning("SPICE failed (%s): skipped", e)
        else:
            skipped.append("SPICE (Stanford CoreNLP jars missing)" if _java() else "SPICE (needs Java)")
            log_once(logger, logging.INFO, "SPICE skipped: %s (see tasks/captioning/README.md, 'Outputs')",
                     "no Java" if not _java() else "the Stanford CoreNLP 3.6.0 jars are missing (offline)")
    out["skipped"] = skipped
    return out


def clip_scores(image_feats: Tensor, cand_feats: Tensor, ref_feats: Sequence[Tensor] | None = None,
                weight: float = 2.5) -> tuple[Tensor, Tensor | None]:
    """Per-instance CLIPScore and RefCLIPScore (not x100).

    Args:
        image_feats: ``[N, D]`` image features; cand_feats: ``[N, D]`` candidate text features.
        ref_feats: ``N`` tensors ``[R_i, D]`` of reference text features, or ``None``.
        weight: ``w`` (2.5).
    Returns:
        ``(clip_s [N], refclip_s [N] or None)``; ``refclip_s = 2 a b / (a + b)`` with ``a = clip_s``,
        ``b = max(max_r cos(cand, ref_r), 0)`` (0 where both are 0).
    """
    clip_s = clip_score(image_feats, cand_feats, weight)
    if ref_feats is None:
        return clip_s, None
    cand = F.normalize(cand_feats.float(), dim=-1)
    ref_cos = torch.stack([(F.normalize(r.float(), dim=-1) @ c).max() for r, c in zip(ref_feats, cand)])
    ref_cos = ref_cos.clamp(min=0)
    denom = clip_s + ref_cos
    ref_s = torch.where(denom > 0, 2 * clip_s * ref_cos / denom.clamp(min=1e-12), torch.zeros_like(denom))
    return clip_s, ref_s


class ClipScorer:
    """CLIPScore / RefCLIPScore with one frozen CLIP (Hessel et al.: ViT-B/32, prefix ``"A photo depicts "``).

    Args:
        model: open_clip-style model (``encode_image``, ``encode_text``).
        tokenizer: ``list[str] -> LongTensor`` (truncating to the context length).
        prefix: text prepended to candidates and references.
        weight: ``w``.
    """

    def __init__(self, model: nn.Module, tokenizer: Callable, prefix: str = "A photo depicts ",
                 weight: float = 2.5) -> None:
        self.model = model.eval().requires_grad_(False)
        self.tokenizer, self.prefix, self.weight = tokenizer, prefix, weight

    @property
    def device(self) -> torch.device:
        return next(self.model.parameters()).device

    @torch.no_grad()
    def encode_images(self, images: Tensor) -> Tensor:
        """``[N, 3, H, W]`` preprocessed images -> ``[N, D]``."""
        return self.model.encode_image(images.to(self.device)).float()

    @torch.no_grad()
    def encode_texts(self, texts: Sequence[str]) -> Tensor:
        """Texts (the prefix is added here) -> ``[N, D]``."""
        return self.model.encode_text(self.tokenizer([self.prefix + t for t in texts]).to(self.device)).float()

    def score(self, image_feats: Tensor, candidates: Sequence[str],
              references: Sequence[Sequence[str]] | None = None) -> tuple[Tensor, Tensor | None]:
        """Per-instance ``(clip_s [N], refclip_s [N] | None)`` for ``[N, D]`` image features."""
        cand = self.encode_texts(candidates)
        refs = None
        if references is not None:
            flat = [r for rs in references for r in rs]
            feats = self.encode_texts(flat).split([len(rs) for rs in references])
            refs = list(feats)
        return clip_scores(image_feats.to(cand.device), cand, refs, self.weight)


def vocab_size(captions: Sequence[str]) -> int:
    """Number of distinct words (simple tokenisation) over all captions."""
    return len({w for c in captions for w in simple_tokenize(c).split()})


def self_bleu(captions: Sequence[str], max_captions: int = 500, seed: int = 0) -> float:
    """Self-BLEU-4 (x100): mean sentence BLEU-4 of each caption against all the others (Zhu et al.,
    Texygen); at most ``max_captions`` (a seeded subset) to bound the quadratic cost. High = collapse."""
    from pycocoevalcap.bleu.bleu import Bleu

    caps = [simple_tokenize(c) for c in captions]
    if len(caps) > max_captions:
        caps = random.Random(seed).sample(caps, max_captions)
    if len(caps) < 2:
        return 0.0
    gts = {i: caps[:i] + caps[i + 1:] for i in range(len(caps))}
    res = {i: [c] for i, c in enumerate(caps)}
    _, per = Bleu(4).compute_score(gts, res, verbose=0)
    return 100.0 * sum(per[3]) / len(per[3])
