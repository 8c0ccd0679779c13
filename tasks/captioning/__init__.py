"""Captioning: ClipCap / CapDec prefix captioners on OPT, COCO training, RLCF caption TTA, caption metrics.

Modules (imported on demand; ``transformers`` and ``pycocoevalcap`` load only when used):

* :mod:`.model`: :class:`~.model.PrefixCaptioner` (CLIP embedding -> mapper -> frozen causal LM), decoding.
* :mod:`.checkpoint`: OPT from a local folder, tiny word-level captioners, official-checkpoint conversion.
* :mod:`.policy`: :class:`~.policy.CaptionPolicy`, the generative :class:`rlcf.Policy` of caption TTA (rollouts
  of K beam-search captions).
* :mod:`.train`, :mod:`.features`: ClipCap / CapDec training with cached CLIP features, resumable.
* :mod:`.task`, :mod:`.run`: the runner task and the command line of caption TTA (``scripts/tta_*.sh``).
* :mod:`.metrics`: BLEU / METEOR / ROUGE-L / CIDEr / SPICE, CLIPScore / RefCLIPScore, diversity.
* :mod:`.data`: Karpathy, LAVIS-style and NoCaps annotation loaders.
* :mod:`.world_demo`: the whole path in the embedded world on CPU.
"""
