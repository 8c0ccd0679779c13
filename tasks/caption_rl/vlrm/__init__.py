"""VLRM-style A2C (Dzabraev, Kunitsyn, Ivanyuta 2024): the recipes ``vlrm`` and ``vlrm_retrieval`` (VLRM-RS).

:mod:`.recipe` (the recipes, their config section ``vlrm`` and set-up), :mod:`.penalties` and :mod:`.bad_phrases`
(the returns' penalties), :mod:`.similarity` (the ``sim`` term: CLIP or a BLIP-2 ITM head), :mod:`.calibrate` (the
CLIP ``sim``'s weight, measured against the ITM spread).
"""
from .recipe import VLRMConfig, VLRMRecipe, VLRMRetrievalRecipe

__all__ = ["VLRMConfig", "VLRMRecipe", "VLRMRetrievalRecipe"]
