"""Image-text retrieval with test-time adaptation (RLCF, ICLR 2024, section "retrieval").

* :mod:`.data`: COCO / Flickr30K Karpathy test splits (LAVIS or Karpathy JSON) and the embedded
  world's captions; LAVIS caption pre-processing; the ``img2txt`` / ``txt2img`` maps.
* :mod:`.policies`: :class:`ImageToTextPolicy` (image tower tuned, gallery captions cached) and
  :class:`TextToImagePolicy` (text side tuned, gallery images cached; queries are caption strings).
* :mod:`.metrics`: R@1/5/10 per direction (LAVIS definitions, deterministic tie rule), ``r_mean``.
* :mod:`.task` / :mod:`.run`: the runner task (one query = one sample) and the CLI
  ``python -m tasks.retrieval.run --config configs/retrieval/coco.yaml direction=t2i``.

Library use::

    policy = ImageToTextPolicy(clip, encode_text_gallery(clip, tok, captions))   # gallery cached once
    reward = rlcf.CLIPReward(reward_clip, rtok); reward.set_candidates(captions)
    method = rlcf.create_method("rlcf", policy, reward, steps=8, lr=1e-6, eps=1e-6, k=20, selection=1.0)
    with torch.no_grad():
        scores = method(image)        # [3, H, W] -> [N_captions] after 8 steps; weights restored
"""
