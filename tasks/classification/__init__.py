"""Zero-shot classification with test-time adaptation (policies, views, datasets, peers, runner task)."""
from . import peers  # noqa: F401  (registers ctpt, zero, tda, kd in the rlcf method registry)
