"""CLIP loading through open_clip: architecture names, ``pretrained`` tags, local checkpoints.

``load_clip("ViT-B/16", "pretrained/clip/ViT-B-16.pt")`` loads an OpenAI ``.pt`` (TorchScript)
file; ``load_clip("ViT-B-16", "openai")`` uses open_clip's tag (needs the network or open_clip's
cache); ``load_clip("MyArch", "ckpt.pt", config_file="MyArch.json")`` registers an architecture
JSON first; ``load_clip("hf:pretrained/hf/siglip-base-patch16-224")`` loads a local Hugging Face
CLIP / SigLIP folder (:mod:`tasks.common.hf_clip`). Missing files and unknown names raise errors
that name them and list what exists.
"""
from __future__ import annotations

import logging
import zipfile
from contextlib import contextmanager, nullcontext
from pathlib import Path
from typing import Callable, Iterator, Sequence

import torch
from torch import Tensor, nn

from .data import MissingDataError, UserError, hub_download_command, repo_path
from .text import encode_texts, text_features, text_tower

logger = logging.getLogger(__name__)

__all__ = ["load_clip", "canonical_arch", "register_model_config", "ClipBundle", "build_clip", "resolve_device",
           "build_reward", "checkpoint_problems", "eot_index", "text_features", "text_features_from_embeddings",
           "encode_texts", "file_fingerprint", "folder_fingerprint", "weights_fingerprint", "run_fingerprint",
           "is_hf", "hf_folder", "quiet_random_init", "weight_files", "spec_weight_files", "unknown_arch_message"]

ClipBundle = tuple[nn.Module, Callable, Callable]

_OPENAI_NAMES = {"ViT-L/14@336px": "ViT-L-14-336", "ViT-L-14@336px": "ViT-L-14-336"}


def canonical_arch(name: str) -> str:
    """OpenAI spelling (``ViT-B/16``, ``ViT-L/14@336px``) -> open_clip name (``ViT-B-16``)."""
    return _OPENAI_NAMES.get(name, name.replace("/", "-"))


class ModelNameError(UserError, KeyError):
    """An unknown architecture or pretrained tag (the message lists the known ones)."""

    def __str__(self) -> str:
        return str(self.args[0]) if self.args else ""


class _DropRandomInitWarning(logging.Filter):
    def filter(self, record: logging.LogRecord) -> bool:
        return "No pretrained weights loaded" not in record.getMessage()


@contextmanager
def quiet_random_init(active: bool) -> Iterator[None]:
    """open_clip warns through the root logger for every model built without weights; silence it when
    random weights (tests, training from scratch) are what the caller asked for."""
    f = _DropRandomInitWarning()
    if active:
        logging.getLogger().addFilter(f)
    try:
        yield
    finally:
        logging.getLogger().removeFilter(f)


def register_model_config(path: str | Path) -> str:
    """Register an open_clip architecture JSON (file or folder of files); returns the file's stem."""
    import open_clip

    p = repo_path(path)
    if not p.exists():
        raise MissingDataError(f"model config '{path}' not found (an open_clip architecture JSON, or a folder of them)")
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
        name: open_clip architecture (``ViT-B-16``), OpenAI spelling (``ViT-B/16``), or ``hf:<folder>``
            for a local Hugging Face ``CLIPModel`` / ``SiglipModel`` folder (``pretrained`` must then be unset).
        pretrained: an open_clip tag (``openai``), a local checkpoint (state_dict / OpenAI
            TorchScript ``.pt``), or ``None`` for random weights.
        device: target device.
        config_file: optional architecture JSON registered with open_clip before creation.
        precision: ``fp32`` (default, as the official code), ``fp16``, ``bf16``, ``amp``...
    Returns:
        ``(model, preprocess, tokenizer)`` with the model in eval mode.
    """
    if is_hf(name):
        return _load_hf(name, pretrained, device, precision)
    import open_clip

    if config_file is not None:
        register_model_config(config_file)
    arch = canonical_arch(name)
    if arch not in open_clip.list_models():
        raise ModelNameError(unknown_arch_message(name, arch, open_clip.list_models()))
    if pretrained is not None and (Path(pretrained).suffix in (".pt", ".pth", ".bin", ".safetensors")
                                   or "/" in pretrained or Path(pretrained).exists()):
        path = Path(pretrained).expanduser()
        if not path.is_file():
            raise MissingDataError(
                f"CLIP checkpoint '{path}' not found for architecture '{arch}'. Put the weights there "
                f"(e.g. the OpenAI file {arch}.pt under pretrained/clip/, see pretrained/README.md; the embedded "
                f"world's models: python -m tasks.world) or pass an open_clip tag: "
                f"{open_clip.list_pretrained_tags_by_model(arch) or 'none known'}")
        from .preflight import WeightFile, reading, require_intact

        require_intact([WeightFile("CLIP checkpoint", path, WEIGHTS_HINT)])   # truncated / corrupt: one line
        if _is_torchscript(path):
            logger.info("loading OpenAI TorchScript checkpoint %s", path)
            with reading(path, "CLIP checkpoint", WEIGHTS_HINT):
                model = open_clip.load_openai_model(str(path), precision=precision, device=device)
            cfg = open_clip.get_model_config(arch) or {}
            size = cfg.get("vision_cfg", {}).get("image_size", model.visual.image_size)
            preprocess = open_clip.image_transform(size, is_train=False)
            return model.eval(), preprocess, open_clip.get_tokenizer(arch)
        pretrained = str(path)
    elif pretrained is not None and pretrained not in open_clip.list_pretrained_tags_by_model(arch):
        raise ModelNameError(f"unknown pretrained tag '{pretrained}' for '{arch}'. Known tags: "
                             f"{open_clip.list_pretrained_tags_by_model(arch)}; or pass a local checkpoint path")
    from .preflight import reading

    local = pretrained is not None and Path(pretrained).is_file()
    try:
        with quiet_random_init(pretrained is None), \
                reading(pretrained if local else "", "CLIP checkpoint", WEIGHTS_HINT) if local else nullcontext():
            model, _, preprocess = open_clip.create_model_and_transforms(
                arch, pretrained=pretrained, device=device, precision=precision)
    except RuntimeError as e:
        if pretrained is not None and not Path(pretrained).exists():
            raise RuntimeError(
                f"could not fetch weights '{pretrained}' for '{arch}' ({e}). Without network access, download "
                f"the checkpoint elsewhere, put it under pretrained/clip/ and pass its path.") from e
        raise
    return model.eval(), preprocess, open_clip.get_tokenizer(arch)


def unknown_arch_message(name: str, arch: str, known: Sequence[str]) -> str:
    """The error for an unknown architecture: the near matches first (difflib), then every name."""
    import difflib

    lower = {k.lower(): k for k in known}   # case is no clue: vit-l-14 means ViT-L-14
    near = [lower[n] for n in difflib.get_close_matches(arch.lower(), list(lower), n=5, cutoff=0.6)]
    first = f" Did you mean {', '.join(near)}?" if near else ""
    return (f"unknown CLIP architecture '{name}'.{first} Register your own with config_file=<arch>.json; "
            f"all {len(known)} known: {', '.join(known)}")


HF_PREFIX = "hf:"
_HF_DTYPES = {"fp32": torch.float32, "amp": torch.float32, "pure_fp16": torch.float16, "fp16": torch.float16,
              "pure_bf16": torch.bfloat16, "bf16": torch.bfloat16}


def is_hf(name: str | None) -> bool:
    """``True`` for an ``hf:<folder>`` model name (a local Hugging Face transformers folder)."""
    return isinstance(name, str) and name.startswith(HF_PREFIX)


def hf_folder(name: str) -> Path:
    """The folder of an ``hf:<folder>`` name (relative paths also tried under the repository root)."""
    return repo_path(name[len(HF_PREFIX):])


def _load_hf(name: str, pretrained: str | None, device: str | torch.device, precision: str) -> ClipBundle:
    from .hf_clip import load_hf_clip

    if pretrained is not None:
        raise UserError(f"model '{name}' is a Hugging Face folder holding its own weights: leave pretrained unset "
                        f"(got pretrained='{pretrained}')")
    if precision not in _HF_DTYPES:
        raise UserError(f"precision '{precision}' is not one of {sorted(_HF_DTYPES)} for HF model '{name}'")
    return load_hf_clip(hf_folder(name), device=device, dtype=_HF_DTYPES[precision])


def resolve_device(name: str) -> torch.device:
    """``"auto"`` -> CUDA when available, else CPU; anything else as ``torch.device(name)``."""
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return torch.device(name)


def build_clip(spec: dict, device: torch.device) -> ClipBundle:
    """``(model, preprocess, tokenizer)`` from a config spec ``{arch, pretrained, config_file}``."""
    return load_clip(spec["arch"], spec.get("pretrained"), device=device, config_file=spec.get("config_file"))


_FILE_HASHES: dict[tuple[str, int, int], str] = {}


def file_fingerprint(path: str | Path) -> str:
    """SHA-256 of a file, cached per process by (path, size, mtime)."""
    p = Path(path).expanduser().resolve()
    st = p.stat()
    key = (str(p), st.st_size, st.st_mtime_ns)
    if key not in _FILE_HASHES:
        import hashlib

        h = hashlib.sha256()
        with open(p, "rb") as f:
            for block in iter(lambda: f.read(1 << 20), b""):
                h.update(block)
        _FILE_HASHES[key] = h.hexdigest()
    return _FILE_HASHES[key]


def weights_fingerprint(cfg: dict) -> dict:
    """``{"model" | "reward" | "reward.<i>": SHA-256}`` of the local checkpoint files a config's models load:
    records depend on the weights, which a config names only by path (a retrained model at the same
    path must not resume old records)."""
    out = {}
    for key in ("model", "reward"):
        spec = cfg.get(key)
        if not isinstance(spec, dict):
            continue
        members = spec.get("ensemble") or [spec]
        for i, m in enumerate(members):
            path, name = m.get("pretrained"), key if len(members) == 1 else f"{key}.{i}"
            if _is_path(path) and Path(path).is_file():
                out[name] = file_fingerprint(path)
            elif is_hf(m.get("arch")) and hf_folder(m["arch"]).is_dir():
                out[name] = folder_fingerprint(hf_folder(m["arch"]))
    return out


def folder_fingerprint(folder: str | Path) -> str:
    """SHA-256 over the names and :func:`file_fingerprint` of a model folder's files (an HF folder: weights,
    config, processor and tokenizer files all change what a run computes)."""
    import hashlib

    h = hashlib.sha256()
    root = Path(folder)
    for f in sorted(p for p in root.rglob("*") if p.is_file() and ".cache" not in p.relative_to(root).parts):
        h.update(f"{f.relative_to(root).as_posix()}:{file_fingerprint(f)}\n".encode())
    return h.hexdigest()


def run_fingerprint(cfg: dict) -> dict:
    """What determines a record of a run of ``cfg``: :func:`result_fingerprint` plus the weights' hashes."""
    from .runner import result_fingerprint

    return {**result_fingerprint(cfg), "weights": weights_fingerprint(cfg)}


def build_reward(reward_cfg: dict, device: torch.device, policy: nn.Module | None = None):
    """``rlcf.CLIPReward`` from ``{arch, pretrained, config_file, weight}``, or ``rlcf.EnsembleReward``
    (RLCF-S) when ``ensemble`` lists member specs with a ``confidence`` each. Nothing is cached yet.
    ``policy``: the policy CLIP whose preprocessed images the reward receives (their mean / std are mapped
    to each reward model's own when they differ, e.g. a SigLIP reward behind an OpenAI CLIP policy)."""
    import rlcf

    members = reward_cfg.get("ensemble") or [dict(reward_cfg, confidence=1.0)]
    norm = rlcf.reward.input_norm(policy) if policy is not None else None
    rewards, confidences = [], []
    for spec in members:
        model, _, tok = build_clip(spec, device)
        rewards.append(rlcf.CLIPReward(model, tok, weight=reward_cfg.get("weight", 2.5), input_norm=norm))
        confidences.append(spec.get("confidence", 1.0))
    return rewards[0] if len(rewards) == 1 else rlcf.EnsembleReward(rewards, confidences)


def eot_index(clip: nn.Module, tokens: Tensor) -> Tensor:
    """``[N]`` positions the text features are read from (:meth:`tasks.common.text.TextTower.pool_index`)."""
    return text_tower(clip).pool_index(tokens)


def text_features_from_embeddings(clip: nn.Module, emb: Tensor, eot: Tensor, chunk: int | None = None) -> Tensor:
    """``[N, D]`` unnormalised features of token embeddings ``[N, L, W]`` read at ``eot`` (:mod:`tasks.common.text`)."""
    return text_tower(clip).features_from_embeddings(emb, eot, chunk)


WEIGHTS_HINT = ("OpenAI CLIP checkpoints (ViT-B-16.pt, ViT-L-14.pt; for RLCF-S also ViT-L-14-336px.pt and RN50x64.pt) "
                "go under $PRETRAINED/clip/ (see pretrained/README.md); the embedded world's models are made by "
                "`python -m tasks.world` (or `bash scripts/demo.sh`).")


HF_HINT = ("Save one with `save_pretrained` (model, image processor, tokenizer) or, with network access, "
           f"`{hub_download_command('<hub-id>', 'pretrained/hf/<name>')}`, and name it "
           "model.arch=hf:pretrained/hf/<name>.")


def _is_path(value: str | None) -> bool:
    return bool(value) and ("/" in value or Path(value).suffix in (".pt", ".pth", ".bin", ".safetensors"))


def _model_specs(cfg: dict) -> list[tuple[str, dict]]:
    """``(what, spec)`` of a run config's policy model and, when its method needs one, reward model(s)."""
    import rlcf

    specs = [("policy model", cfg["model"])]
    if rlcf.get_method(cfg["method"]).needs_reward:
        specs += [("reward model", s) for s in (cfg["reward"]["ensemble"] or [cfg["reward"]])]
    return specs


def spec_weight_files(what: str, spec: dict) -> list:
    """The local weight files (:class:`tasks.common.preflight.WeightFile`) a CLIP spec ``{arch, pretrained}`` reads:
    its checkpoint, or its Hugging Face folder."""
    from .preflight import WeightFile

    if not isinstance(spec, dict):
        return []
    if is_hf(spec.get("arch")):
        return [WeightFile(f"{what} (Hugging Face folder)", hf_folder(spec["arch"]), HF_HINT)]
    if _is_path(spec.get("pretrained")):
        return [WeightFile(f"{what} checkpoint", Path(spec["pretrained"]).expanduser(), WEIGHTS_HINT)]
    return []


def weight_files(cfg: dict) -> list:
    """Every CLIP weight file a run config of the policy / reward kind (classification, retrieval) reads."""
    return [w for what, spec in _model_specs(cfg) for w in spec_weight_files(what, spec)]


def checkpoint_problems(cfg: dict) -> list[str]:
    """Missing or damaged checkpoint / architecture files of a run config's policy model and, when its method
    needs one, reward model(s): one human-readable line each (the scripts' pre-flight check)."""
    from .preflight import weight_problems

    out = []
    for what, spec in _model_specs(cfg):
        if is_hf(spec.get("arch")):
            folder = hf_folder(spec["arch"])
            if not (folder / "config.json").is_file():
                owner = {"clip-vit": "openai", "siglip": "google"}
                hub = next((f"{o}/{folder.name}" for k, o in owner.items() if folder.name.startswith(k)), None)
                hint = (f"With network access: `{hub_download_command(hub, folder)}`; or save your own there "
                        "with `save_pretrained` (model, image processor, tokenizer)." if hub else HF_HINT)
                out.append(f"{what}: no Hugging Face model folder at {folder} (config.json missing). {hint}")
            continue
        if _is_path(spec.get("pretrained")) and not Path(spec["pretrained"]).is_file():
            out.append(f"{what} checkpoint not found: {spec['pretrained']}. {WEIGHTS_HINT}")
        if spec.get("config_file") and not repo_path(spec["config_file"]).is_file():
            out.append(f"{what} config not found: {spec['config_file']}")
    return out + weight_problems(weight_files(cfg))


@torch.no_grad()
def zero_shot_classifier(model: nn.Module, tokenizer: Callable, classnames: Sequence[str],
                         templates: Sequence[str | Callable[[str], str]] = ("a photo of a {}.",)) -> Tensor:
    """Normalised class embeddings ``[C, D]``: the mean of the normalised per-template text embeddings,
    renormalised (open_clip's ``build_zero_shot_classifier``, transposed)."""
    from open_clip import build_zero_shot_classifier

    device = next(model.parameters()).device
    return build_zero_shot_classifier(model, tokenizer, list(classnames), list(templates), device=device).T.float()
