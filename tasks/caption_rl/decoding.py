"""Decoding settings of the RL recipes: one dataclass, the papers' values as named presets.

Each recipe decodes in up to three places, each with its own setting in the config (``gt.decoding.*``,
``vlrm.decoding.*``): the rollouts it learns from, a baseline (Chaffin et al.'s greedy caption) and the evaluation.
A config section names a preset and overrides single fields; ``null`` fields keep the preset's value::

    vlrm: {decoding: {rollout: {preset: vlrm_rollout}, eval: {preset: vlrm_eval, max_new_tokens: 30}}}

Presets (:data:`DECODING_PRESETS`):

* ``vlrm_rollout``: top-k 6, temperature 2 sampling (VLRM section 3.6);
* ``vlrm_eval``: beam 5, no repeated 2-grams, 4-60 new tokens, no sampling (VLRM Table 2);
* ``chaffin_policy``: beam 5, no repeated 3-grams, 50 new tokens, the bad-words filter (WTF-RL ``compute_loss``);
* ``chaffin_baseline``: greedy, 50 new tokens, the bad-words filter, *no* n-gram blocking (the public code's
  greedy baseline passes no ``no_repeat_ngram_size``);
* ``chaffin_eval``: beam 5, no repeated 3-grams, max length 50 (WTF-RL's evaluation ``generate``);
* ``captioner``: beam 5 and the captioner config's own limits.

The public WTF-RL code passes ``bad_words_ids=self.model.bad_words_id``, an attribute it never defines, so its list
is not public: ``bad_words`` is empty in the presets and is a config value (phrases, tokenised with the captioner's
tokenizer, leading-space variants included for byte-level BPE).
"""
from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from typing import Any, Sequence

__all__ = ["DecodingConfig", "DECODING_PRESETS", "resolve_decoding", "bad_words_ids"]

_MODES = ("sample", "beam", "greedy")


@dataclass(frozen=True)
class DecodingConfig:
    """How captions are generated (see :meth:`tasks.captioning.model.PrefixCaptioner.generate`).

    Attributes:
        mode: ``"sample"`` (top-k / temperature / top-p), ``"beam"`` (``num_beams``, the best beam) or ``"greedy"``.
        num_beams: beam width for ``"beam"``.
        top_k, temperature, top_p: sampling options (``top_k`` 0: off; ``top_p`` 1: off).
        no_repeat_ngram_size: forbid repeated n-grams of the generated tokens (0: off).
        min_new_tokens, max_new_tokens: length limits; ``None``: the captioner config's.
        bad_words: phrases never generated (``transformers``' bad-words filter).
    """

    mode: str = "beam"
    num_beams: int = 5
    top_k: int = 0
    temperature: float = 1.0
    top_p: float = 1.0
    no_repeat_ngram_size: int = 0
    min_new_tokens: int | None = None
    max_new_tokens: int | None = None
    bad_words: tuple[str, ...] = field(default_factory=tuple)

    def __post_init__(self) -> None:
        if self.mode not in _MODES:
            raise ValueError(f"decoding mode must be one of {list(_MODES)}, got '{self.mode}'")
        for name in ("num_beams", "top_k", "no_repeat_ngram_size"):
            value = getattr(self, name)
            if not isinstance(value, int) or value < (1 if name == "num_beams" else 0):
                raise ValueError(f"decoding {name} must be an int >= {1 if name == 'num_beams' else 0}, got {value!r}")
        if not self.temperature > 0 or not 0 < self.top_p <= 1:
            raise ValueError(f"decoding temperature must be > 0 and top_p in (0, 1], got {self.temperature}, "
                             f"{self.top_p}")
        lo, hi = self.min_new_tokens, self.max_new_tokens
        if (lo is not None and lo < 0) or (hi is not None and hi < 1) or \
                (lo is not None and hi is not None and lo > hi):
            raise ValueError(f"decoding min_new_tokens / max_new_tokens must satisfy 0 <= min <= max, max >= 1; "
                             f"got {lo}, {hi}")
        object.__setattr__(self, "bad_words", tuple(self.bad_words))

    def generate_kwargs(self, tokenizer: Any = None) -> dict[str, Any]:
        """Keyword arguments of :meth:`PrefixCaptioner.generate` (one caption per row)."""
        sample = self.mode == "sample"
        return {"num_return_sequences": 1, "num_beams": self.num_beams if self.mode == "beam" else 1,
                "do_sample": sample, "top_k": self.top_k if sample else None,
                "top_p": self.top_p if sample else None, "temperature": self.temperature if sample else None,
                "no_repeat_ngram_size": self.no_repeat_ngram_size, "min_new_tokens": self.min_new_tokens,
                "max_new_tokens": self.max_new_tokens,
                "bad_words_ids": bad_words_ids(tokenizer, self.bad_words) if self.bad_words else None}

    def to_dict(self) -> dict[str, Any]:
        return {**dataclasses.asdict(self), "bad_words": list(self.bad_words)}


DECODING_PRESETS: dict[str, DecodingConfig] = {
    "vlrm_rollout": DecodingConfig(mode="sample", top_k=6, temperature=2.0),
    "vlrm_eval": DecodingConfig(mode="beam", num_beams=5, no_repeat_ngram_size=2, min_new_tokens=4,
                                max_new_tokens=60),
    "chaffin_policy": DecodingConfig(mode="beam", num_beams=5, no_repeat_ngram_size=3, max_new_tokens=50),
    "chaffin_baseline": DecodingConfig(mode="greedy", max_new_tokens=50),
    "chaffin_eval": DecodingConfig(mode="beam", num_beams=5, no_repeat_ngram_size=3, max_new_tokens=50),
    "captioner": DecodingConfig(mode="beam", num_beams=5),
}

#: Config section of a decoding setting: a preset name and ``null`` (= the preset's) fields.
DECODING_SECTION: dict[str, Any] = {"preset": None, **{f.name: None for f in dataclasses.fields(DecodingConfig)}}


def resolve_decoding(section: DecodingConfig | str | dict[str, Any] | None, default: str = "captioner",
                     name: str = "decoding") -> DecodingConfig:
    """A :class:`DecodingConfig` from a preset name, a config section (``preset`` + non-null fields) or itself.

    Args:
        section: ``"vlrm_eval"``, ``{"preset": "vlrm_eval", "max_new_tokens": 30}``, ``None`` (the default preset).
        default: preset used when the section names none.
        name: the config key, for error messages.
    """
    if isinstance(section, DecodingConfig):
        return section
    if section is None or isinstance(section, str):
        section = {"preset": section}
    if not isinstance(section, dict):
        raise TypeError(f"{name} must be a preset name or a mapping, got {section!r}")
    preset = section.get("preset") or default
    if preset not in DECODING_PRESETS:
        raise KeyError(f"{name}.preset '{preset}' unknown; choose from {sorted(DECODING_PRESETS)}")
    known = {f.name for f in dataclasses.fields(DecodingConfig)}
    unknown = set(section) - known - {"preset"}
    if unknown:
        raise KeyError(f"{name} has unknown keys {sorted(unknown)}; valid: {sorted(known)} and 'preset'")
    values = {k: v for k, v in section.items() if k != "preset" and v is not None}
    if "bad_words" in values:
        values["bad_words"] = tuple(values["bad_words"])
    try:
        return dataclasses.replace(DECODING_PRESETS[preset], **values)
    except ValueError as e:
        raise ValueError(f"{name}: {e}") from e


def bad_words_ids(tokenizer: Any, phrases: Sequence[str]) -> list[list[int]]:
    """Token id sequences of ``phrases`` for the bad-words filter: each phrase as written and with a leading space
    (byte-level BPE tokenises a word differently after a space), duplicates removed."""
    if tokenizer is None:
        raise ValueError("bad_words needs the captioner's tokenizer")
    out: list[list[int]] = []
    for p in phrases:
        for variant in (p, " " + p.lstrip()):
            ids = list(tokenizer(variant, add_special_tokens=False).input_ids)
            if ids and ids not in out:
                out.append(ids)
    return out
