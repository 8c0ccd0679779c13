"""RL training of prefix captioners (``tasks.captioning``) with CLIP rewards, through the ``rlcf`` core.

Recipes, one folder each, registered by name (:mod:`.recipe`: ``Recipe``, ``register_recipe``, ``get_recipe``), on
the same captioner, rollouts, loop and metrics:

* ``gt/``: ``gt_contrastive``, Chaffin et al. 2024, ground-truth-guided CLIP RL: bidirectional contrastive reward
  over a pool with mined hard negatives, CLIP-space discriminator (pre-trained by :mod:`.gt.pretrain_disc`),
  reward-weighted teacher forcing, one row per ground-truth caption;
* ``vlrm/``: ``vlrm`` / ``vlrm_retrieval``, Dzabraev et al. 2024, A2C with per-token returns (BLIP-2 ITM or
  calibrated CLIP similarity, reference log-likelihood, bad-phrase / repeat / no-EOS penalties), value head,
  probability-weighted policy loss, micro-batched paper-scale steps.

A recipe owns its config section, its set-up and its construction from a config; the command lines find it by
name, so a new recipe is one new folder. The papers' settings are presets (:mod:`.decoding`, :mod:`.presets`,
``configs/caption_rl/``). Entry points: ``python -m tasks.caption_rl.train`` (COCO, any config),
``python -m tasks.caption_rl.gt.pretrain_disc``, ``python -m tasks.caption_rl.world`` (the embedded world, CPU),
``python -m tasks.caption_rl.vlrm.calibrate``. Metrics: :mod:`.metrics` (CLIP Recall, i2t recall, Self-BLEU,
vocabulary, length).
"""
from .a2c import ValueHead, normalize_advantages, probability_policy_loss, value_loss
from .contrastive import bidirectional_contrastive_reward, normalized_contrastive_term
from .decoding import DECODING_PRESETS, DecodingConfig, resolve_decoding
from .metrics import clip_recall, distinctiveness_metrics, image_to_text_recall, quality_metrics, self_bleu_official
from .recipe import Batch, Recipe, StepResult, get_recipe, list_recipes, load_recipes, register_recipe

__all__ = ["ValueHead", "normalize_advantages", "probability_policy_loss", "value_loss", "Batch", "StepResult",
           "Recipe", "register_recipe", "get_recipe", "list_recipes", "load_recipes",
           "bidirectional_contrastive_reward", "normalized_contrastive_term", "DECODING_PRESETS", "DecodingConfig",
           "resolve_decoding", "clip_recall", "distinctiveness_metrics", "image_to_text_recall", "quality_metrics",
           "self_bleu_official"]
