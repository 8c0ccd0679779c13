"""rlcf: reinforcement learning with CLIP feedback, test-time adaptation toolkit (core).

The core is task-agnostic and torch-first; tasks (classification, retrieval, captioning) live in
``tasks/`` and depend on it, never the reverse.
"""
from . import reward
from .adapt import adapt
from .baselines import compute_advantages, list_baselines
from .config import AdaptConfig, Flags
from .engine import Method
from .episodic import MomentumReset, Snapshot, restore, snapshot
from .losses import marginal_entropy, reinforce_ce, reinforce_logprob, select_confident
from .methods import create_method, get_method, list_methods, register_method
from .policy import DiscretePolicy, Episode, Policy, Rollout, Sampling
from .reward import CLIPReward, EnsembleReward, clip_score, encode_batched
from .sampling import sample_candidates, topk_candidates

__version__ = "0.1.0"

__all__ = [
    "adapt", "AdaptConfig", "Method", "Flags", "create_method", "get_method", "list_methods", "register_method",
    "CLIPReward", "EnsembleReward", "clip_score", "encode_batched", "compute_advantages", "list_baselines",
    "reinforce_ce", "reinforce_logprob", "marginal_entropy", "select_confident",
    "topk_candidates", "sample_candidates", "Snapshot", "snapshot", "restore", "MomentumReset",
    "Policy", "DiscretePolicy", "Rollout", "Sampling", "Episode", "reward",
]
