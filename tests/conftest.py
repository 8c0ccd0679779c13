"""Shared fixtures: tiny random-weight open_clip models built from JSON configs (CPU, offline)."""
from __future__ import annotations

from pathlib import Path

import pytest
import torch

from tasks.methods import register_all

register_all()   # the peer methods (C-TPT, ZERO, TDA, KD): registered explicitly, once, for every test

FIXTURES = Path(__file__).parent / "fixtures"
CLASSNAMES = ["cat", "dog", "golden retriever", "airplane", "tree frog", "house_finch", "car"]


@pytest.fixture(autouse=True)
def _seed():
    torch.manual_seed(0)
    torch.set_num_threads(1)   # tiny models: threads only add contention on the 2-core machines


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
