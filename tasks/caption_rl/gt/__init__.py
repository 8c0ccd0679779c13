"""The ground-truth-guided CLIP RL recipe (Chaffin, Kijak, Claveau 2024): ``gt_contrastive``.

:mod:`.recipe` (the recipe, its config section ``gt`` and set-up), :mod:`.discriminator` (the CLIP-space
discriminator), :mod:`.pretrain_disc` (its pre-training stage and command).
"""
from .recipe import GTContrastiveConfig, GTContrastiveRecipe

__all__ = ["GTContrastiveConfig", "GTContrastiveRecipe"]
