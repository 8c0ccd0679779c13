"""Stand-ins for the weight files a real user has, built small and random (CPU, offline), and the two ways a download
goes wrong: a truncated copy and a corrupt one.

* :func:`openai_torchscript`: a tiny ViT CLIP in OpenAI's TorchScript layout (``visual.conv1``, ``visual.proj``,
  ``token_embedding``, ``transformer.resblocks.*``, ``ln_final``, ``text_projection``, ``logit_scale``: what
  ``open_clip.build_model_from_openai_state_dict`` reads), saved with ``torch.jit``, and the same weights as a plain
  state dict with the open_clip architecture JSON of the state-dict route;
* :func:`opt_folder`: a tiny OPT in the hub layout (``config.json``, ``model.safetensors``, tokenizer files);
* :func:`captioner_checkpoint`: a captioner checkpoint whose LM is read from such a folder by path.
"""
from __future__ import annotations

import json
import os
import shutil
from pathlib import Path

import torch

#: a ViT CLIP that OpenAI's layout describes completely (heads = width / 64, QuickGELU, 77-token context)
TINY_OPENAI = {"embed_dim": 32, "quick_gelu": True,
               "vision_cfg": {"image_size": 32, "layers": 1, "width": 64, "patch_size": 8},
               "text_cfg": {"context_length": 77, "vocab_size": 49408, "width": 64, "heads": 1, "layers": 1}}
CAPTIONS = ["a red circle.", "a blue square on a green background.", "two small stars.", "a yellow triangle."]


def openai_torchscript(folder: Path, name: str = "TinyOpenAI", seed: int = 0) -> tuple[Path, Path, Path]:
    """``(torchscript .pt, state-dict .pt, architecture JSON)`` of one tiny CLIP. The weights are rounded to fp16
    first (OpenAI's archives hold fp16 weights, and ``build_model_from_openai_state_dict`` casts through fp16)."""
    import open_clip

    folder.mkdir(parents=True, exist_ok=True)
    arch = folder / f"{name}.json"
    arch.write_text(json.dumps(TINY_OPENAI))
    open_clip.add_model_config(arch)
    torch.manual_seed(seed)
    model = open_clip.create_model(name, pretrained=None).eval()
    with torch.no_grad():
        for p in model.parameters():
            p.copy_(p.half().float())
    sd = folder / f"{name}-state-dict.pt"
    torch.save(model.state_dict(), sd)
    # OpenAI's model builds its attention mask in code: it is no state-dict entry, so it becomes a traced constant
    model.attn_mask = model._buffers.pop("attn_mask")
    image = torch.randn(1, 3, 32, 32)
    text = open_clip.get_tokenizer(name)(["a photo"])
    import warnings

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")   # torch.jit's deprecation notices
        scripted = torch.jit.trace(model, (image, text), check_trace=False)
    ts = folder / f"{name}.pt"
    scripted.save(str(ts))
    return ts, sd, arch


def opt_folder(folder: Path, seed: int = 0) -> Path:
    """A tiny random OPT with a word-level tokenizer in the hub layout (weights in ``model.safetensors``)."""
    from tasks.captioning.checkpoint import build_word_tokenizer, tiny_opt

    tok = build_word_tokenizer(CAPTIONS)
    lm = tiny_opt(len(tok.get_vocab()), hidden=32, layers=1, heads=2, ffn=64, seed=seed)
    lm.save_pretrained(folder)
    tok.save_pretrained(folder)
    assert (folder / "model.safetensors").is_file()
    return folder


def captioner_checkpoint(path: Path, lm: Path, prefix_dim: int = 32) -> Path:
    """A tiny captioner whose frozen LM is stored by path (``lm``), as a paper-size one is."""
    from tasks.captioning.checkpoint import captioner_state, load_pretrained_lm, save_atomic
    from tasks.captioning.model import CaptionerConfig, PrefixCaptioner

    model, tok = load_pretrained_lm(lm)
    cap = PrefixCaptioner(CaptionerConfig(prefix_dim=prefix_dim, prefix_length=2, clip_length=2, num_layers=1,
                                          num_heads=2, stop_token=None, max_new_tokens=4), model, tok)
    save_atomic({"model": captioner_state(cap, lm)}, path)
    return path


def truncated(src: Path, dst: Path | None = None, fraction: float = 0.5) -> Path:
    """A copy of ``src`` (a file, or a folder with its weights file cut) cut to ``fraction`` of its bytes: a download
    that stopped."""
    return _damaged(src, dst, "truncated", lambda b: b[:int(len(b) * fraction)])


def corrupt(src: Path, dst: Path | None = None) -> Path:
    """A copy of ``src`` whose first KiB is overwritten with random bytes."""
    return _damaged(src, dst, "corrupt", lambda b: os.urandom(min(1024, len(b) // 2)) + b[min(1024, len(b) // 2):])


def _damaged(src: Path, dst: Path | None, how: str, change) -> Path:
    src = Path(src)
    if src.is_dir():
        dst = Path(dst or src.with_name(f"{how}-{src.name}"))
        shutil.copytree(src, dst, dirs_exist_ok=True)
        weights = next(dst / f for f in ("model.safetensors", "pytorch_model.bin") if (dst / f).is_file())
        weights.write_bytes(change(weights.read_bytes()))
        return dst
    dst = Path(dst or src.with_name(f"{how}-{src.name}"))
    dst.parent.mkdir(parents=True, exist_ok=True)
    dst.write_bytes(change(src.read_bytes()))
    return dst
