"""Loading and saving captioners: OPT from a local folder, tiny word-level LMs, official checkpoints.

Checkpoint format written by this toolkit (``torch.save`` of a dict, written atomically)::

    {"format": "rlcf-captioner/1", "config": CaptionerConfig dict, "mapper": mapper state_dict,
     "lm": {"path": "pretrained/opt-125m"}                        # frozen pretrained LM, or
           {"config": OPTConfig dict, "state_dict": ..., "tokenizer": tokenizer JSON},  # embedded LM
     "epoch", "step", "train_config", "max_tokens",
     ...training state (optimizer, scheduler, scaler, rng): ckpt-latest.pt only (resume); epoch copies hold none}

The frozen OPT LM is stored by path, not by value: a checkpoint holds the mapper (and, in ``ckpt-latest.pt``, its
optimizer state); the README gives the size of a paper-size one (``benchmarks/caption_checkpoint_size.py``).

Official RLCF checkpoints (``ckpt-latest.pt`` of ``clipcap_opt125m_transformer_coco_01.zip``:
``{"state_dict": ClipCaptionPrefixV2 state}``) are converted on load: only the mapper
(``clip_project.*``) is read; the LM comes from the local OPT folder.
"""
from __future__ import annotations

import logging
import re
from pathlib import Path
from typing import Any, Iterable

import torch
from torch import nn

from tasks.common.atomic import current_umask, save_atomic
from tasks.common.data import MissingDataError, hub_download_command

from .model import CaptionerConfig, PrefixCaptioner

logger = logging.getLogger(__name__)

__all__ = ["load_pretrained_lm", "build_word_tokenizer", "tiny_opt", "tiny_captioner", "convert_official_mapper",
           "save_atomic", "captioner_state", "load_captioner", "opt_hint", "hub_download_command",
           "lm_folder_problems", "current_umask", "CAPTIONER_HINT", "lm_read_by"]

#: the files of a hub folder as ``facebook/opt-125m`` ships it (weights: either file, or a sharded index)
LM_WEIGHTS = ("model.safetensors", "pytorch_model.bin", "model.safetensors.index.json", "pytorch_model.bin.index.json")
LM_TOKENIZER = (("tokenizer.json",), ("vocab.json", "merges.txt"))


def opt_hint(path: str | Path) -> str:
    """How to get OPT-125m into ``path`` (no download happens here)."""
    return (f"Download facebook/opt-125m once on a machine with network access: `{hub_download_command('facebook/opt-125m', path)}` "
            f"(or `git clone https://huggingface.co/facebook/opt-125m {path}`), and copy the folder here.")




#: how to get a captioner checkpoint again
CAPTIONER_HINT = ("Train one with scripts/train_clipcap_coco.sh (or train_capdec_coco.sh), or unzip the official release "
                  "asset clipcap_opt125m_transformer_coco_01.zip / capdec_opt125m_transformer_coco_01.zip "
                  "(github.com/mzhaoshuai/RLCF/releases/tag/0.0.1) into the output folder.")


def lm_read_by(path: str | Path, lm_path: str | Path | None = None) -> Path | None:
    """The LM folder :func:`load_captioner` reads for the checkpoint ``path`` (``None``: the checkpoint holds its LM).
    Reads the checkpoint's small object record only (``mmap``: no tensor is read); an unreadable or legacy file
    answers ``lm_path``."""
    try:
        ckpt = torch.load(Path(path).expanduser(), map_location="cpu", weights_only=False, mmap=True)
        state = ckpt.get("model", ckpt) if isinstance(ckpt, dict) else {}
        lm = state.get("lm") if isinstance(state, dict) and str(state.get("format", "")).startswith("rlcf") else None
    except Exception:  # noqa: BLE001 - the loader names the problem
        return Path(lm_path).expanduser() if lm_path else None
    if isinstance(lm, dict) and "state_dict" in lm:
        return None
    folder = lm_path or (lm.get("path") if isinstance(lm, dict) else None)
    return Path(folder).expanduser() if folder else None


def lm_folder_problems(path: str | Path) -> list[str]:
    """What a local LM folder lacks to load (empty when nothing): ``config.json``, a weights file, tokenizer files."""
    p = Path(path).expanduser()
    if not (p / "config.json").is_file():
        return [f"language model folder '{p}' not found (or has no config.json)"]
    out = []
    if not any((p / f).is_file() for f in LM_WEIGHTS):
        out.append(f"'{p}' has no weights file (one of {', '.join(LM_WEIGHTS)})")
    if not any(all((p / f).is_file() for f in files) for files in LM_TOKENIZER):
        out.append(f"'{p}' has no tokenizer files (vocab.json + merges.txt, or tokenizer.json)")
    return out


def load_pretrained_lm(path: str | Path, dtype: torch.dtype = torch.float32) -> tuple[nn.Module, Any]:
    """``(OPTForCausalLM, tokenizer)`` from a local folder laid out as the hub ships ``facebook/opt-125m``
    (``config.json``, ``generation_config.json``, ``pytorch_model.bin`` or ``model.safetensors``, ``vocab.json``,
    ``merges.txt``, ``special_tokens_map.json``, ``tokenizer_config.json``); never the network.

    The tokenizer is the folder's (OPT: ``GPT2Tokenizer``, BOS = EOS = ``</s>`` prepended to every text, pad
    ``<pad>``); its pad id is the model config's when the tokenizer names none. Every LM weight must come from the
    file (tied ``lm_head`` aside): a checkpoint that leaves one uninitialised is an error, not random weights.

    Raises:
        MissingDataError: the folder, its ``config.json``, its weights or its tokenizer files are missing, or the
            weights file lacks some of the model's weights (the message says what and how to get it).
    """
    from transformers import AutoTokenizer, OPTForCausalLM
    from transformers.utils import logging as hf_logging

    from tasks.common.preflight import WeightFile, hf_weight_files, reading, require_intact

    p = Path(path).expanduser()
    problems = lm_folder_problems(p)
    if problems:
        raise MissingDataError("; ".join(problems) + ". " + opt_hint(p))
    weights = WeightFile("language model weights", p, opt_hint(p))
    require_intact([weights])   # a truncated or corrupt model.safetensors: one line naming it, before the load
    bars = hf_logging.is_progress_bar_enabled()
    hf_logging.disable_progress_bar()   # "Loading weights" bar: noise in every run
    try:
        with reading((hf_weight_files(p) or [p])[0], weights.what, weights.hint):
            lm, info = OPTForCausalLM.from_pretrained(str(p), dtype=dtype, local_files_only=True,
                                                      output_loading_info=True)
    finally:
        if bars:
            hf_logging.enable_progress_bar()
    missing = sorted(k for k in info.get("missing_keys", ()) if k != "lm_head.weight")
    meta = [n for n, t in lm.state_dict().items() if t.is_meta]
    if missing or meta:
        raise MissingDataError(f"the weights in '{p}' lack {len(missing or meta)} of the model's tensors (e.g. "
                               f"{(missing or meta)[:3]}): an incomplete or foreign checkpoint. " + opt_hint(p))
    tok = AutoTokenizer.from_pretrained(str(p), local_files_only=True)
    if tok.pad_token_id is None and lm.config.pad_token_id is not None:
        tok.pad_token = tok.convert_ids_to_tokens(int(lm.config.pad_token_id))
    return lm.eval(), tok


def build_word_tokenizer(texts: Iterable[str]) -> Any:
    """A word-level ``PreTrainedTokenizerFast`` over the words of ``texts`` (lower-cased, punctuation
    split off). Special tokens: ``<s>`` 0, ``<pad>`` 1, ``</s>`` 2 (BOS = EOS = ``</s>``, as OPT),
    ``<unk>`` 3. Decoding joins words with spaces."""
    from tokenizers import Tokenizer, decoders, models, normalizers, pre_tokenizers
    from transformers import PreTrainedTokenizerFast

    specials = ["<s>", "<pad>", "</s>", "<unk>"]
    words: set[str] = set()
    for t in texts:
        words.update(re.findall(r"\w+|[^\w\s]", t.lower()))
    vocab = {w: i for i, w in enumerate(specials + sorted(words))}
    tk = Tokenizer(models.WordLevel(vocab, unk_token="<unk>"))
    tk.normalizer = normalizers.Lowercase()
    tk.pre_tokenizer = pre_tokenizers.Whitespace()
    tk.decoder = decoders.WordPiece(prefix="##", cleanup=True)
    return PreTrainedTokenizerFast(tokenizer_object=tk, bos_token="</s>", eos_token="</s>", pad_token="<pad>",
                                   unk_token="<unk>")


def tokenizer_from_json(text: str) -> Any:
    from tokenizers import Tokenizer
    from transformers import PreTrainedTokenizerFast

    return PreTrainedTokenizerFast(tokenizer_object=Tokenizer.from_str(text), bos_token="</s>", eos_token="</s>",
                                   pad_token="<pad>", unk_token="<unk>")


def tiny_opt(vocab_size: int, hidden: int = 64, layers: int = 2, heads: int = 4, ffn: int = 128,
             max_positions: int = 128, seed: int | None = None) -> nn.Module:
    """A randomly initialised small ``OPTForCausalLM`` (tests, embedded world)."""
    from transformers import OPTConfig, OPTForCausalLM

    if seed is not None:
        torch.manual_seed(seed)
    cfg = OPTConfig(vocab_size=vocab_size, hidden_size=hidden, num_hidden_layers=layers, ffn_dim=ffn,
                    num_attention_heads=heads, max_position_embeddings=max_positions, word_embed_proj_dim=hidden,
                    pad_token_id=1, bos_token_id=2, eos_token_id=2, dropout=0.0, attention_dropout=0.0)
    return OPTForCausalLM(cfg).eval()


def tiny_captioner(texts: Iterable[str], prefix_dim: int, hidden: int = 64, lm_layers: int = 2, heads: int = 4,
                   prefix_length: int = 4, clip_length: int = 4, mapper_layers: int = 2, train_lm: bool = True,
                   seed: int = 0, **config: Any) -> PrefixCaptioner:
    """A small captioner with a word-level tokenizer over ``texts`` and a random tiny OPT (``train_lm``:
    trained with the mapper, since no pretrained LM this small exists). Stop token: the tokenizer's EOS."""
    tok = build_word_tokenizer(texts)
    lm = tiny_opt(len(tok.get_vocab()), hidden=hidden, layers=lm_layers, heads=heads, ffn=2 * hidden, seed=seed)
    cfg = CaptionerConfig(prefix_dim=prefix_dim, prefix_length=prefix_length, clip_length=clip_length,
                          num_layers=mapper_layers, num_heads=heads, stop_token=None, **config)
    torch.manual_seed(seed)
    return PrefixCaptioner(cfg, lm, tok, train_lm=train_lm)


def convert_official_mapper(state_dict: dict[str, torch.Tensor], num_heads: int = 8) -> tuple[dict, dict]:
    """Official RLCF / ClipCap ``clip_project.*`` weights -> this toolkit's mapper state and config fields.

    The official attention has bias-free query and key/value projections (``to_queries``,
    ``to_keys_values`` whose output rows are ``[keys ; values]``) and a biased ``project``;
    ``nn.MultiheadAttention`` gets ``in_proj_weight = [W_q ; W_k ; W_v]`` and a zero ``in_proj_bias``,
    which computes the same function.

    Returns:
        ``(mapper_state_dict, config_fields)`` with ``prefix_dim``, ``prefix_length``,
        ``clip_length``, ``num_layers``, ``mapping_type`` inferred from the shapes.
    """
    sd = {k[len("clip_project."):]: v for k, v in state_dict.items() if k.startswith("clip_project.")}
    if not sd:
        raise KeyError("no 'clip_project.*' weights in this checkpoint: not an official ClipCap/RLCF captioner")
    if "model.0.weight" in sd:  # MLP mapper: identical layout
        out_dim = sd["model.2.weight"].shape[0]
        return dict(sd), {"mapping_type": "mlp", "prefix_dim": int(sd["model.0.weight"].shape[1]),
                          "_mlp_out": int(out_dim)}
    dim = sd["prefix_const"].shape[1]
    layers = sorted({int(m.group(1)) for k in sd if (m := re.match(r"transformer\.layers\.(\d+)\.", k))})
    out: dict[str, torch.Tensor] = {"linear.weight": sd["linear.weight"], "linear.bias": sd["linear.bias"],
                                    "prefix_const": sd["prefix_const"]}
    for i in layers:
        src, dst = f"transformer.layers.{i}.", f"transformer.layers.{i}."
        wq, wkv = sd[src + "attn.to_queries.weight"], sd[src + "attn.to_keys_values.weight"]
        out[dst + "self_attn.in_proj_weight"] = torch.cat([wq, wkv[:dim], wkv[dim:]], dim=0)
        bq = sd.get(src + "attn.to_queries.bias", torch.zeros(dim, dtype=wq.dtype))
        bkv = sd.get(src + "attn.to_keys_values.bias", torch.zeros(2 * dim, dtype=wq.dtype))
        out[dst + "self_attn.in_proj_bias"] = torch.cat([bq, bkv])
        out[dst + "self_attn.out_proj.weight"] = sd[src + "attn.project.weight"]
        out[dst + "self_attn.out_proj.bias"] = sd[src + "attn.project.bias"]
        for a, b in (("norm1", "norm1"), ("norm2", "norm2"), ("mlp.fc1", "linear1"), ("mlp.fc2", "linear2")):
            out[dst + f"{b}.weight"] = sd[src + f"{a}.weight"]
            out[dst + f"{b}.bias"] = sd[src + f"{a}.bias"]
    fields = {"mapping_type": "transformer", "prefix_dim": int(sd["linear.weight"].shape[1]),
              "prefix_length": int(sd["prefix_const"].shape[0]),
              "clip_length": int(sd["linear.weight"].shape[0] // dim), "num_layers": len(layers),
              "num_heads": num_heads}
    if layers:
        fields["mlp_ratio"] = sd[f"transformer.layers.{layers[0]}.mlp.fc1.weight"].shape[0] / dim
    return out, fields


def captioner_state(captioner: PrefixCaptioner, lm_path: str | Path | None = None) -> dict[str, Any]:
    """The serialisable model part of a checkpoint (mapper; the LM by path or, if trained, by value)."""
    state: dict[str, Any] = {"format": "rlcf-captioner/1", "config": captioner.config.to_dict(),
                             "mapper": captioner.mapper.state_dict()}
    if captioner.train_lm or lm_path is None:
        tok = captioner.tokenizer
        state["lm"] = {"config": captioner.lm.config.to_dict(), "state_dict": captioner.lm.state_dict(),
                       "tokenizer": tok.backend_tokenizer.to_str() if hasattr(tok, "backend_tokenizer") else None}
    else:
        state["lm"] = {"path": str(lm_path)}
    return state


def load_captioner(path: str | Path, lm_path: str | Path | None = None, device: str | torch.device = "cpu",
                   lm_dtype: torch.dtype = torch.float32, config: CaptionerConfig | None = None) -> PrefixCaptioner:
    """Load a captioner from a toolkit or an official checkpoint; the LM is frozen.

    Args:
        path: checkpoint file (``ckpt-latest.pt`` of :mod:`tasks.captioning.train`, or official).
        lm_path: local LM folder (``pretrained/opt-125m``); overrides the path stored in the checkpoint.
        device: target device.
        lm_dtype: LM weights dtype (official: float16 on GPU).
        config: decoding/architecture overrides for official checkpoints (defaults: official values).
    """
    from tasks.common.preflight import WeightFile, reading, require_intact

    p = Path(path).expanduser()
    if not p.is_file():
        raise MissingDataError(f"captioner checkpoint '{p}' not found. {CAPTIONER_HINT}")
    require_intact([WeightFile("captioner checkpoint", p, CAPTIONER_HINT)])
    with reading(p, "captioner checkpoint", CAPTIONER_HINT):
        ckpt = torch.load(p, map_location="cpu", weights_only=False)
    state = ckpt.get("model", ckpt) if isinstance(ckpt, dict) else ckpt
    if state.get("format", "").startswith("rlcf-captioner"):
        cfg = CaptionerConfig.from_dict(state["config"])
        lm_info = state["lm"]
        if "state_dict" in lm_info:
            from transformers import OPTConfig, OPTForCausalLM

            lm = OPTForCausalLM(OPTConfig.from_dict(lm_info["config"]))
            lm.load_state_dict(lm_info["state_dict"])
            lm = lm.to(lm_dtype)
            tok = tokenizer_from_json(lm_info["tokenizer"])
        else:
            lm, tok = load_pretrained_lm(lm_path or lm_info["path"], lm_dtype)
        mapper_sd = state["mapper"]
    else:
        sd = state.get("state_dict", state)
        mapper_sd, fields = convert_official_mapper(sd)
        if lm_path is None:
            raise ValueError("an official checkpoint needs lm_path (the local OPT folder, e.g. pretrained/opt-125m)")
        lm, tok = load_pretrained_lm(lm_path, lm_dtype)
        mlp_out = fields.pop("_mlp_out", None)
        if mlp_out is not None:
            fields["prefix_length"] = mlp_out // int(lm.get_input_embeddings().weight.shape[1])
        cfg = CaptionerConfig.from_dict({**(config or CaptionerConfig()).to_dict(), **fields})
        logger.info("converted official captioner %s (%s mapper, %d layers)", p, cfg.mapping_type, cfg.num_layers)
    cap = PrefixCaptioner(cfg, lm, tok)
    cap.mapper.load_state_dict(mapper_sd)
    return cap.to(device).eval()
