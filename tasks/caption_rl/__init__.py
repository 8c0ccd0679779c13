"""RL training of prefix captioners (``tasks.captioning``) with CLIP rewards, through the ``rlcf`` core.

Two recipes on the same captioner, rollouts, loop and metrics:

* ``gt_contrastive`` (:mod:`.gt_contrastive`): Chaffin et al. 2024, ground-truth-guided CLIP RL: bidirectional
  contrastive reward over a pool with mined hard negatives, CLIP-space discriminator (pre-trained by
  :mod:`.pretrain_disc`), reward-weighted teacher forcing, one row per ground-truth caption;
* ``vlrm`` / ``vlrm_retrieval`` (:mod:`.vlrm`): Dzabraev et al. 2024, A2C with per-token returns (BLIP-2 ITM or
  calibrated CLIP similarity, reference log-likelihood, bad-phrase / repeat / no-EOS penalties), value head,
  probability-weighted policy loss, micro-batched paper-scale steps.

The papers' settings are presets (:mod:`.decoding`, :mod:`.presets`, ``configs/caption_rl/``). Entry points:
``python -m tasks.caption_rl.train`` (COCO, any config), ``python -m tasks.caption_rl.pretrain_disc``,
``python -m tasks.caption_rl.world`` (the embedded world, CPU), ``python -m tasks.caption_rl.calibrate``. Metrics:
:mod:`.metrics` (CLIP Recall, i2t recall, Self-BLEU, vocabulary, length).
"""
from .a2c import ValueHead, normalize_advantages, probability_policy_loss, value_loss
from .common import Batch, StepResult
from .contrastive import bidirectional_contrastive_reward, normalized_contrastive_term
from .decoding import DECODING_PRESETS, DecodingConfig, resolve_decoding
from .discriminator import CLIPDiscriminator, discriminator_step, load_discriminator, save_discriminator
from .gt_contrastive import GTContrastiveConfig, GTContrastiveRecipe
from .metrics import clip_recall, distinctiveness_metrics, image_to_text_recall, quality_metrics, self_bleu_official
from .penalties import PenaltyRules, vlrm_returns
from .similarity import CLIPSimilarity, ITMSimilarity
from .vlrm import VLRMConfig, VLRMRecipe

__all__ = ["ValueHead", "normalize_advantages", "probability_policy_loss", "value_loss", "Batch", "StepResult",
           "bidirectional_contrastive_reward", "normalized_contrastive_term", "DECODING_PRESETS", "DecodingConfig",
           "resolve_decoding", "CLIPDiscriminator", "discriminator_step", "load_discriminator", "save_discriminator",
           "GTContrastiveConfig", "GTContrastiveRecipe", "clip_recall", "distinctiveness_metrics",
           "image_to_text_recall", "quality_metrics", "self_bleu_official", "PenaltyRules", "vlrm_returns",
           "CLIPSimilarity", "ITMSimilarity", "VLRMConfig", "VLRMRecipe"]
