"""CLIP loading through open_clip: architecture names, ``pretrained`` tags, local checkpoints.

``load_clip("ViT-B/16", "pretrained/clip/ViT-B-16.pt")`` loads an OpenAI ``.pt`` (TorchScript)
file; ``load_clip("ViT-B-16", "openai")`` uses open_clip's tag (needs the network or open_clip's
cache); ``load_clip("MyArch", "ckpt.pt", config_file="MyArch.json")`` registers an architecture
JSON first. Missing files and unknown names raise errors that name them and list what exists.
"""
from __future__ import annotations

import logging
import zipfile
from pathlib import Path
from typing import Callable

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from .data import MissingDataError

logger = logging.getLogger(__name__)

__all__ = ["load_clip", "canonical_arch", "register_model_config", "ClipBundle", "build_clip", "resolve_device", "build_reward", "checkpoint_problems",
           "eot_index", "text_features", "text_features_from_embeddings", "encode_texts"]

ClipBundle = tuple[nn.Module, Callable, Callable]

_OPENAI_NAMES = {"ViT-L/14@336px": "ViT-L-14-336", "ViT-L-14@336px": "ViT-L-14-336"}


def canonical_arch(name: str) -> str:
    """OpenAI spelling (``ViT-B/16``, ``ViT-L/14@336px``) -> open_clip name (``ViT-B-16``)."""
    return _OPENAI_NAMES.get(name, name.replace("/", "-"))


def register_model_config(path: str | Path) -> str:
    """Register an open_clip architecture JSON (file or folder of files); returns the file's stem."""
    import open_clip

    p = Path(path)
    if not p.exists():
        raise MissingDataError(f"model config '{p}' not found")
    open_clip.add_model_config(p)
    return p.stem


def _is_torchscript(path: Path) -> bool:
    if not zipfile.is_zipfile(path):
        return False
    with zipfile.ZipFile(path) as z:
        return any(n.endswith("constants.pkl") or "/code/" in n for n in z.namelist())


def load_clip(name: str, pretrained: str | None = None, device: str | torch.device = "cpu",
              config_file: str | Path | None = None, precision: str = "fp32") -> ClipBundle:
    """Create an open_clip model, its eval preprocessing and tokenizer.

    Args:
        name: open_clip architecture (``ViT-B-16``) or OpenAI spelling (``ViT-B/16``).
        pretrained: an open_clip tag (``openai``), a local checkpoint (state_dict / OpenAI
            TorchScript ``.pt``), or ``None`` for random weights.
        device: target device.
        config_file: optional architecture JSON registered with open_clip before creation.
        precision: ``fp32`` (default, as the official code), ``fp16``, ``bf16``, ``amp``...
    Returns:
        ``(model, preprocess, tokenizer)`` with the model in eval mode.
    """
    import open_clip

    if config_file is not None:
        register_model_config(config_file)
    arch = canonical_arch(name)
    if arch not in open_clip.list_models():
        raise KeyError(f"unknown CLIP architecture '{name}'. Available: {', '.join(open_clip.list_models())}. "
                       "Register your own with config_file=<arch>.json")
    if pretrained is not None and (Path(pretrained).suffix in (".pt", ".pth", ".bin", ".safetensors")
                                   or "/" in pretrained or Path(pretrained).exists()):
        path = Path(pretrained).expanduser()
        if not path.is_file():
            raise MissingDataError(
                f"CLIP checkpoint '{path}' not found for architecture '{arch}'. Put the weights there "
                f"(e.g. the OpenAI file {arch}.pt under pretrained/clip/, see pretrained/README.md) or pass "
                f"an open_clip tag: {open_clip.list_pretrained_tags_by_model(arch) or 'none known'}")
        if _is_torchscript(path):
            logger.info("loading OpenAI TorchScript checkpoint %s", path)
            model = open_clip.load_openai_model(str(path), precision=precision, device=device)
            cfg = open_clip.get_model_config(arch) or {}
            size = cfg.get("vision_cfg", {}).get("image_size", model.visual.image_size)
            preprocess = open_clip.image_transform(size, is_train=False)
            return model.eval(), preprocess, open_clip.get_tokenizer(arch)
        pretrained = str(path)
    elif pretrained is not None and pretrained not in open_clip.list_pretrained_tags_by_model(arch):
        raise KeyError(f"unknown pretrained tag '{pretrained}' for '{arch}'. Known tags: "
                       f"{open_clip.list_pretrained_tags_by_model(arch)}; or pass a local checkpoint path")
    try:
        model, _, preprocess = open_clip.create_model_and_transforms(
            arch, pretrained=pretrained, device=device, precision=precision)
    except RuntimeError as e:
        if pretrained is not None and not Path(pretrained).exists():
            raise RuntimeError(
                f"could not fetch weights '{pretrained}' for '{arch}' ({e}). Without network access, download "
                f"the checkpoint elsewhere, put it under pretrained/clip/ and pass its path.") from e
        raise
    return model.eval(), preprocess, open_clip.get_tokenizer(arch)


def resolve_device(name: str) -> torch.device:
    """``"auto"`` -> CUDA when available, else CPU; anything else as ``torch.device(name)``."""
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return torch.device(name)


def build_clip(spec: dict, device: torch.device) -> ClipBundle:
    """``(model, preprocess, tokenizer)`` from a config spec ``{arch, pretrained, config_file}``.

    ``arch: world:<policy|reward|filter>`` loads the embedded world's trained models (same open_clip
    path, checkpoints under ``pretrained/world``).
    """
    if spec["arch"].startswith("world:"):
        from ..world.models import load_world_clip

        return load_world_clip(spec["arch"].split(":", 1)[1], device=device)
    return load_clip(spec["arch"], spec.get("pretrained"), device=device, config_file=spec.get("config_file"))


def weights_fingerprint(cfg: dict) -> dict:
    """``{"model" | "reward": SHA-256}`` of the embedded world's checkpoints that ``cfg``'s ``world:`` models
    resolve to: records depend on those weights, which the config only names ``world:<which>`` (other
    models are named by their file or tag in the config itself).  Call it once the models are built."""
    out = {}
    for key in ("model", "reward"):
        spec = cfg.get(key)
        if isinstance(spec, dict) and str(spec.get("arch", "")).startswith("world:"):
            from ..world.models import ensure_world_model

            out[key] = ensure_world_model(spec["arch"].split(":", 1)[1], progress=False)["sha256"]
    return out


def run_fingerprint(cfg: dict) -> dict:
    """What determines a record of a run of ``cfg``: :func:`result_fingerprint` plus the world weights."""
    from .runner import result_fingerprint

    return {**result_fingerprint(cfg), "weights": weights_fingerprint(cfg)}


def build_reward(reward_cfg: dict, device: torch.device, resolution: int | None = None):
    """``rlcf.CLIPReward`` from ``{arch, pretrained, config_file, weight}``, or ``rlcf.EnsembleReward``
    (RLCF-S) when ``ensemble`` lists member specs with a ``confidence`` each. Nothing is cached yet."""
    import rlcf

    members = reward_cfg.get("ensemble") or [dict(reward_cfg, confidence=1.0)]
    rewards, confidences = [], []
    for spec in members:
        model, _, tok = build_clip(spec, device)
        rewards.append(rlcf.CLIPReward(model, tok, weight=reward_cfg.get("weight", 2.5), policy_resolution=resolution))
        confidences.append(spec.get("confidence", 1.0))
    return rewards[0] if len(rewards) == 1 else rlcf.EnsembleReward(rewards, confidences)


def eot_index(clip: nn.Module, tokens: Tensor) -> Tensor:
    pool = getattr(clip, "text_pool_type", "argmax")
    if pool != "argmax":
        raise NotImplementedError(f"text_pool_type '{pool}' is not supported (OpenAI-style 'argmax' only)")
    return tokens.argmax(dim=-1)


def text_features_from_embeddings(clip: nn.Module, emb: Tensor, eot: Tensor, chunk: int | None = None) -> Tensor:
    """Run the text tower of an open_clip ``CLIP`` on token embeddings.

    The sequence may be truncated to any length ``L`` that covers every EOT position: with the
    causal mask, a token's output depends only on the tokens before it, so the EOT feature is
    unchanged by the padding after it.

    Args:
        clip: open_clip ``CLIP`` (built-in text tower).
        emb: ``[N, L, W]`` token embeddings (``L <= context_length``).
        eot: ``[N]`` EOT positions (< L).
        chunk: process at most ``chunk`` sequences at a time (memory on 1000-class sets).
    Returns:
        ``[N, D]`` unnormalised text features.
    """
    n, length, _ = emb.shape
    if chunk is not None and n > chunk:
        return torch.cat([text_features_from_embeddings(clip, emb[i:i + chunk], eot[i:i + chunk])
                          for i in range(0, n, chunk)])
    cast = clip.transformer.get_cast_dtype()
    mask = clip.attn_mask
    if mask is None and length != clip.positional_embedding.shape[0]:
        raise ValueError("truncating the text context needs a causal text tower")
    x = emb.to(cast) + clip.positional_embedding[:length].to(cast)
    x = clip.transformer(x, attn_mask=None if mask is None else mask[:length, :length])
    x = clip.ln_final(x)
    x = x[torch.arange(n, device=x.device), eot]
    proj = clip.text_projection
    if proj is not None:
        x = proj(x) if isinstance(proj, nn.Linear) else x @ proj
    return x


def text_features(clip: nn.Module, tokens: Tensor, truncate: bool = True, chunk: int | None = None) -> Tensor:
    """Unnormalised text features ``[N, D]`` of token ids ``[N, context_length]`` (with grad if enabled);
    the tower runs only up to the last EOT when ``truncate`` (exact under the causal mask)."""
    tokens = tokens.to(clip.positional_embedding.device)
    eot = eot_index(clip, tokens)
    length = int(eot.max()) + 1 if truncate and clip.attn_mask is not None else tokens.shape[1]
    return text_features_from_embeddings(clip, clip.token_embedding(tokens[:, :length]), eot, chunk)


@torch.no_grad()
def encode_texts(clip: nn.Module, tokens: Tensor, chunk: int | None = 256, truncate: bool = True) -> Tensor:
    """Normalised text features ``[N, D]`` (float32) of token ids by a frozen text tower."""
    return F.normalize(text_features(clip, tokens, truncate, chunk).float(), dim=-1)


WEIGHTS_HINT = ("OpenAI CLIP checkpoints (ViT-B-16.pt, ViT-L-14.pt; for RLCF-S also ViT-L-14-336px.pt and RN50x64.pt) "
                "go under $PRETRAINED/clip/; see pretrained/README.md.")


def _is_path(value: str | None) -> bool:
    return bool(value) and ("/" in value or Path(value).suffix in (".pt", ".pth", ".bin", ".safetensors"))


def checkpoint_problems(cfg: dict) -> list[str]:
    """Missing checkpoint / architecture files of a run config's policy model and, when its method
    needs one, reward model(s): one human-readable line each (the scripts' pre-flight check)."""
    import rlcf

    specs = [("policy model", cfg["model"])]
    if rlcf.get_method(cfg["method"]).needs_reward:
        specs += [("reward model", s) for s in (cfg["reward"]["ensemble"] or [cfg["reward"]])]
    out = []
    for what, spec in specs:
        if spec["arch"].startswith("world:"):
            continue
        if _is_path(spec.get("pretrained")) and not Path(spec["pretrained"]).is_file():
            out.append(f"{what} checkpoint not found: {spec['pretrained']}. {WEIGHTS_HINT}")
        if spec.get("config_file") and not Path(spec["config_file"]).is_file():
            out.append(f"{what} config not found: {spec['config_file']}")
    return out
