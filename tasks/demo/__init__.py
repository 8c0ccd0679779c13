"""The main job on the embedded offline world (``python -m tasks.demo``, ``bash scripts/demo.sh``): the table
(:mod:`.job`), its cells (:mod:`.cells`), the negative control (:mod:`.control`) and the learning-rate sweep on the
dev splits (:mod:`.tune`)."""
from ..world.report import ood_average
from .cells import CONFIGS, OOD, PEER_ROWS, ROWS, SPLITS
from .job import main, run_seed

__all__ = ["main", "ROWS", "PEER_ROWS", "SPLITS", "OOD", "CONFIGS", "ood_average", "run_seed"]
