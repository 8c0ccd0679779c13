"""What every recipe shares: the batch, the step result, the recipe base class and its registry, the run's set-up.

A recipe turns a :class:`Batch` into ``(loss, parameters)`` pairs: each parameter group is updated by the
gradient of its own loss only (:func:`tasks.caption_rl.a2c.assign_isolated_grads`), so e.g. the value head
never sees the policy loss. The training loop owns the optimiser, clipping, schedule and checkpoints.

A recipe is a :class:`Recipe` subclass in its own folder of ``tasks/caption_rl/`` (``gt/``, ``vlrm/``), registered
with :func:`register_recipe`; it owns its config section (``defaults``), the set-up it needs (``needs``: hard
negatives, one row per caption, its own models) and its construction from a config (``from_config``). The
command lines find recipes by name (:func:`get_recipe`); :func:`load_recipes` imports every recipe folder, so a
new recipe is one new folder.
"""
from __future__ import annotations

import importlib
import pkgutil
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Any, Callable, ClassVar, Sequence, TypeVar

import torch
from torch import Tensor, nn

from rlcf import CLIPReward
from tasks.captioning.model import PrefixCaptioner

from .decoding import DECODING_SECTION

__all__ = ["Batch", "StepResult", "Needs", "Setup", "Recipe", "register_recipe", "get_recipe", "list_recipes",
           "load_recipes", "dataclass_from", "plain_section", "decoding_section", "clip_texts", "encode_reward_texts",
           "policy_parameters", "frozen_parameters", "detach_stats"]


@dataclass
class Batch:
    """One training batch of ``B`` images.

    Attributes:
        index: ``[B]`` images (rows of the per-image tensors of :class:`tasks.caption_rl.data.RLData`).
        prefix_feats: ``[B, Dp]`` captioner inputs (policy-CLIP image embeddings).
        reward_feats: ``[B, Dr]`` reward-CLIP image embeddings.
        captions: ``B`` ground-truth captions (one per image) or ``None`` (unsupervised recipes).
        negative_feats: ``[B * k, Dr]`` reward-CLIP embeddings of mined hard-negative images, or ``None``.
        pixels: ``[B, 3, H, W]`` images preprocessed for a pixel-reading reward (an ITM head), or ``None``.
        extra_feats: other per-image embeddings by name, e.g. ``{"phi": [B, Dphi]}`` (VLRM-RS's own CLIP).
    """

    index: Tensor
    prefix_feats: Tensor
    reward_feats: Tensor
    captions: list[str] | None = None
    negative_feats: Tensor | None = None
    pixels: Tensor | None = None
    extra_feats: dict[str, Tensor] = field(default_factory=dict)

    def __len__(self) -> int:
        return int(self.index.shape[0])

    def subset(self, rows: slice) -> Batch:
        """The images ``rows`` of the batch (their captions, pixels, extra features; negatives image-major)."""
        n = len(self)
        idx = torch.arange(n)[rows]
        neg = None
        if self.negative_feats is not None:
            k = self.negative_feats.shape[0] // n
            neg = self.negative_feats.view(n, k, -1)[idx].reshape(len(idx) * k, -1)
        return Batch(self.index[idx], self.prefix_feats[idx], self.reward_feats[idx],
                     None if self.captions is None else [self.captions[i] for i in idx.tolist()], neg,
                     None if self.pixels is None else self.pixels[idx],
                     {k: v[idx] for k, v in self.extra_feats.items()})


@dataclass
class StepResult:
    """Losses with the parameters each one trains, logged statistics and a few sample captions."""

    losses: list[tuple[Tensor, list[nn.Parameter]]]
    stats: dict[str, float] = field(default_factory=dict)
    samples: list[str] = field(default_factory=list)
    weight: float = 1.0     # share of the batch (micro-batches: the loop averages their stats with it)


@dataclass
class Needs:
    """What a recipe asks of the run's set-up before the training features are computed.

    Attributes:
        neighbours: hard-negative neighbours mined per training image (0: none).
        caption_rows: one training row per ground-truth caption (``data.rows=caption``), else one per image.
        extra_clips: other image embeddings by name: ``{name: (clip, preprocess, arch, weights)}``.
        pixel_transform: images preprocessed for a pixel-reading reward (an ITM head), or ``None``.
        models: the recipe's own models, for :meth:`Recipe.from_config` (an ITM similarity, a ``Phi`` reward).
    """

    neighbours: int = 0
    caption_rows: bool = False
    extra_clips: dict[str, tuple] = field(default_factory=dict)
    pixel_transform: Callable | None = None
    models: dict[str, Any] = field(default_factory=dict)


@dataclass
class Setup:
    """Everything a run builds from its config before training (:func:`tasks.caption_rl.train.setup`)."""

    cfg: dict
    data: Any                       # tasks.caption_rl.data.RLData
    captioner: PrefixCaptioner
    reward: CLIPReward
    recipe: Recipe | None = None
    evaluate: Callable[[int], dict] | None = None
    out: Path = Path(".")
    needs: Needs = field(default_factory=Needs)


class Recipe:
    """Base class of the recipes :mod:`tasks.caption_rl.loop` trains.

    Class attributes (set by each recipe):
        name: its registry name (set by :func:`register_recipe`); section: its config section (``"gt"``,
        ``"vlrm"``); needs_captions: batches carry one ground-truth caption per image; lora_adapters: the LoRA
        adapters it can train (``("policy",)``, A2C also ``"value"``); ablations: ``{name: overrides}`` of the
        embedded-world runs; world_overrides: its settings in the embedded world (:mod:`tasks.caption_rl.world`);
        option_docs: the dataclasses documenting its section's keys (``--help``).
    """

    name: ClassVar[str] = ""
    section: ClassVar[str] = ""
    needs_captions: ClassVar[bool] = False
    lora_adapters: ClassVar[tuple[str, ...]] = ("policy",)
    ablations: ClassVar[dict[str, list[str]]] = {}
    world_overrides: ClassVar[list[str]] = []
    #: ``{sub-section: options dataclass}`` whose docstrings give ``--help`` its key meanings (``""``: the section)
    option_docs: ClassVar[dict[str, type]] = {}

    captioner: PrefixCaptioner

    # ------------------------------------------------------------------ set-up (class level)
    @classmethod
    def defaults(cls) -> dict[str, Any]:
        """The recipe's config section with its default values."""
        return {}

    @classmethod
    def check_inputs(cls, cfg: dict) -> None:
        """Raise :class:`tasks.common.data.MissingDataError` for a file the recipe needs that is missing."""

    @classmethod
    def needs(cls, cfg: dict, device: torch.device) -> Needs:
        """What the set-up must prepare for this recipe (its own models are loaded here)."""
        return Needs()

    @classmethod
    def negatives(cls, cfg: dict) -> tuple[int, ...]:
        """1-based ranks of the mined neighbours put in each batch as hard negatives."""
        return ()

    @classmethod
    def options(cls, cfg: dict) -> Any:
        """The recipe's section of ``cfg`` as its options dataclass (checked: a bad value is an error here)."""
        raise NotImplementedError

    @classmethod
    def from_config(cls, cfg: dict, setup: Setup) -> Recipe:
        """The recipe of a run config, on the run's captioner, reward and data."""
        raise NotImplementedError

    # ------------------------------------------------------------------ training
    def parameter_groups(self) -> dict[str, list[nn.Parameter]]:
        """Named groups of trainable parameters (``"policy"``, and ``"value"`` for A2C)."""
        raise NotImplementedError

    def step(self, batch: Batch) -> StepResult:
        """Roll out, score, and return the losses (side updates, e.g. a discriminator, happen here).

        A recipe may also offer ``chunked_steps(batch, micro_batch) -> Iterator[StepResult]`` (gradient
        accumulation over micro-batches, ``optim.micro_batch``)."""
        raise NotImplementedError

    def state_dict(self) -> dict[str, Any]:
        """Recipe-owned state besides the captioner (value head, discriminator and its optimiser)."""
        return {}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Restore :meth:`state_dict`."""


_RECIPES: dict[str, type[Recipe]] = {}
R = TypeVar("R", bound=type[Recipe])


def register_recipe(name: str) -> Callable[[R], R]:
    """Class decorator adding a :class:`Recipe` subclass to the registry under ``name``."""

    def deco(cls: R) -> R:
        if _RECIPES.get(name, cls) is not cls:
            raise KeyError(f"recipe '{name}' is already registered")
        cls.name = name
        _RECIPES[name] = cls
        return cls

    return deco


def load_recipes() -> list[str]:
    """Import every recipe folder of ``tasks/caption_rl/`` (idempotent); returns the registered names."""
    here = Path(__file__).parent
    for m in pkgutil.iter_modules([str(here)]):
        if m.ispkg and not m.name.startswith("_"):
            importlib.import_module(f"{__package__}.{m.name}")
    return list_recipes()


def list_recipes() -> list[str]:
    """The registered recipe names, sorted."""
    return sorted(_RECIPES)


def get_recipe(name: str) -> type[Recipe]:
    """The recipe class registered as ``name``."""
    load_recipes()
    if name not in _RECIPES:
        raise KeyError(f"unknown recipe '{name}'; choose from {list_recipes()}")
    return _RECIPES[name]


def dataclass_from(cls: type, values: dict, **extra: Any) -> Any:
    """``cls(**values, **extra)`` for its own fields: lists become tuples, strings of float fields become floats
    (YAML 1.1 reads ``1e-3`` as a string, and a ``None`` default gives the override no type to be checked against)."""
    types = {f.name: str(f.type) for f in fields(cls)}
    out = {}
    for k, v in {**values, **extra}.items():
        if k not in types:
            continue
        if isinstance(v, str) and "float" in types[k]:
            v = float(v)
        out[k] = tuple(v) if isinstance(v, list) else v
    return cls(**out)


def plain_section(obj: Any, drop: Sequence[str] = ()) -> dict:
    """Dataclass values as YAML-friendly values (tuples -> lists), without the ``drop`` fields."""
    return {f.name: list(v) if isinstance(v := getattr(obj, f.name), tuple) else v
            for f in fields(obj) if f.name not in drop}


def decoding_section(preset: str) -> dict[str, Any]:
    """A decoding config section that takes its values from the named preset (:mod:`.decoding`)."""
    return {**DECODING_SECTION, "preset": preset}


def clip_texts(texts: Sequence[str], strip_periods: bool = False) -> list[str]:
    """Texts as sent to the reward CLIP (periods stripped as in Chaffin et al.'s code, when asked)."""
    return [t.replace(".", "").strip() if strip_periods else t for t in texts]


def encode_reward_texts(reward: CLIPReward, texts: Sequence[str], strip_periods: bool = False) -> Tensor:
    """``[N, D]`` normalised reward-CLIP embeddings of ``texts`` (no grad)."""
    return reward.encode_texts(clip_texts(texts, strip_periods))


def policy_parameters(captioner: PrefixCaptioner, exclude: Sequence[nn.Parameter] = ()) -> list[nn.Parameter]:
    """Every trainable parameter of the captioner (mapper, LM if trained, policy adapters) except ``exclude``."""
    skip = {id(p) for p in exclude}
    return [p for p in captioner.parameters() if p.requires_grad and id(p) not in skip]


def frozen_parameters(*modules: nn.Module) -> list[nn.Parameter]:
    """Parameters with ``requires_grad=False`` (for checks that frozen parts stay frozen)."""
    return [p for m in modules for p in m.parameters() if not p.requires_grad]


def detach_stats(**values: Tensor | float) -> dict[str, float]:
    """Floats for logging (tensors are averaged)."""
    return {k: float(v.detach().float().mean()) if isinstance(v, torch.Tensor) else float(v) for k, v in values.items()}
