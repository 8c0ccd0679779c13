"""RL training of prefix captioners (``tasks.captioning``) with CLIP rewards, through the ``rlcf`` core.

Two recipes on the same captioner, rollouts, loop and metrics:

* ``gt_contrastive`` (:mod:`.gt_contrastive`): Chaffin et al. 2024, ground-truth-guided CLIP RL: bidirectional
  contrastive reward over a pool with mined hard negatives, CLIP-space discriminator, reward-weighted teacher forcing;
* ``vlrm`` / ``vlrm_retrieval`` (:mod:`.vlrm`): Dzabraev et al. 2024, A2C with per-token returns (CLIP similarity,
  reference log-likelihood, bad-phrase / repeat / no-EOS penalties), value head, probability-weighted policy loss.

Entry points: ``python -m tasks.caption_rl.train`` (COCO, any config), ``python -m tasks.caption_rl.world`` (the
embedded world, CPU). Metrics: :mod:`.metrics` (CLIP Recall, i2t recall, Self-BLEU, vocabulary, length).
"""
from .a2c import ValueHead, normalize_advantages, probability_policy_loss, value_loss
from .common import Batch, StepResult
from .contrastive import bidirectional_contrastive_reward, normalized_contrastive_term
from .discriminator import CLIPDiscriminator, discriminator_step
from .gt_contrastive import GTContrastiveConfig, GTContrastiveRecipe
from .metrics import clip_recall, distinctiveness_metrics, image_to_text_recall, quality_metrics
from .penalties import PenaltyRules, vlrm_returns
from .vlrm import VLRMConfig, VLRMRecipe

__all__ = ["ValueHead", "normalize_advantages", "probability_policy_loss", "value_loss", "Batch", "StepResult",
           "bidirectional_contrastive_reward", "normalized_contrastive_term", "CLIPDiscriminator",
           "discriminator_step", "GTContrastiveConfig", "GTContrastiveRecipe", "clip_recall",
           "distinctiveness_metrics", "image_to_text_recall", "quality_metrics", "PenaltyRules", "vlrm_returns",
           "VLRMConfig", "VLRMRecipe"]
