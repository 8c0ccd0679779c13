"""Shared fixtures: tiny random-weight open_clip models built from JSON configs (CPU, offline)."""
from __future__ import annotations

from pathlib import Path

import pytest
import torch

from tasks.methods import load_all

load_all()   # every method of tasks/methods/ (C-TPT, ZERO, TDA, KD), once, for every test

FIXTURES = Path(__file__).parent / "fixtures"
CLASSNAMES = ["cat", "dog", "golden retriever", "airplane", "tree frog", "house_finch", "car"]


@pytest.fixture(autouse=True)
def _seed():
    torch.manual_seed(0)
    torch.set_num_threads(1)   # tiny models: threads only add contention on the 2-core machines


SIGLIP_CONTEXT = 24


def tiny_hf_config(kind: str):
    """A tiny transformers ``CLIPConfig`` / ``SiglipConfig`` (32-px images, CLIP's 49408-token vocabulary)."""
    import transformers

    text = {"vocab_size": 49408, "hidden_size": 32, "intermediate_size": 64, "num_hidden_layers": 2,
            "num_attention_heads": 2}
    vision = {"hidden_size": 32, "intermediate_size": 64, "num_hidden_layers": 2, "num_attention_heads": 2,
              "image_size": 32, "patch_size": 8}
    if kind == "clip":
        return transformers.CLIPConfig(text_config={**text, "max_position_embeddings": 77},
                                       vision_config={**vision, "hidden_size": 64, "intermediate_size": 128},
                                       projection_dim=32)
    return transformers.SiglipConfig(text_config={**text, "max_position_embeddings": SIGLIP_CONTEXT},
                                     vision_config=vision)


def save_tiny_hf(folder: str | Path, kind: str = "clip", seed: int = 0) -> Path:
    """A tiny random-weight HF ``CLIPModel`` / ``SiglipModel`` saved with ``save_pretrained`` in ``folder``, with its
    image processor and a CLIP BPE tokenizer made from open_clip's vocabulary (what ``hf:<folder>`` loads)."""
    import transformers

    from tasks.common.hf_clip import hf_clip_tokenizer_from_open_clip

    folder = Path(folder)
    torch.manual_seed(seed)
    cls = transformers.CLIPModel if kind == "clip" else transformers.SiglipModel
    cls(tiny_hf_config(kind)).eval().save_pretrained(folder)
    if kind == "clip":
        proc = transformers.CLIPImageProcessor(size={"shortest_edge": 32}, crop_size={"height": 32, "width": 32})
    else:
        proc = transformers.SiglipImageProcessor(size={"height": 32, "width": 32})
    proc.save_pretrained(folder)
    hf_clip_tokenizer_from_open_clip(folder, context_length=77 if kind == "clip" else SIGLIP_CONTEXT)
    return folder


def make_clip(name: str = "RLCF-Tiny-Test", seed: int = 0):
    from tasks.common.clip import load_clip

    torch.manual_seed(seed)
    return load_clip(name, None, config_file=FIXTURES / f"{name}.json")


@pytest.fixture
def tiny_clip():
    return make_clip("RLCF-Tiny-Test", 0)


@pytest.fixture
def reward_clip():
    return make_clip("RLCF-Tiny-Reward", 1)


@pytest.fixture
def classnames():
    return list(CLASSNAMES)


@pytest.fixture
def views():
    g = torch.Generator().manual_seed(3)
    return torch.randn(16, 3, 32, 32, generator=g)
