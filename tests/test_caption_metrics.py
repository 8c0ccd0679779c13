"""Caption metrics: CLIPScore / RefCLIPScore against a hand computation, BLEU / CIDEr against
pycocoevalcap's scorers, the pure-Python tokenizer, diversity measures."""
from __future__ import annotations

import math

import pytest
import torch

from tasks.captioning.metrics import ClipScorer, clip_scores, coco_metrics, self_bleu, simple_tokenize, \
    spice_status, vocab_size

REFS = {"1": ["a dog runs on the grass", "a brown dog running in a field", "the dog is playing outside"],
        "2": ["two men play football", "men playing soccer on a field", "a soccer game with two players"],
        "3": ["a plate of food with broccoli", "a meal of rice and vegetables", "broccoli and rice on a plate"]}
CANDS = {"1": "a dog running on the grass", "2": "two men playing soccer on a field", "3": "a plate of rice"}


@pytest.fixture(autouse=True)
def _one_thread():
    torch.set_num_threads(1)


def _cos(a, b):
    return sum(x * y for x, y in zip(a, b)) / math.sqrt(sum(x * x for x in a) * sum(y * y for y in b))


def test_clip_scores_match_hand_computation():
    img = torch.tensor([[1.0, 0.0, 0.0], [0.0, 2.0, 0.0], [1.0, 1.0, 0.0]])
    cand = torch.tensor([[1.0, 1.0, 0.0], [1.0, -1.0, 0.0], [0.0, 0.0, 3.0]])
    refs = [torch.tensor([[1.0, 0.0, 1.0], [0.0, 1.0, 0.0]]), torch.tensor([[1.0, 1.0, 1.0]]),
            torch.tensor([[-1.0, 0.0, -1.0]])]
    clip_s, ref_s = clip_scores(img, cand, refs)
    for i in range(3):
        c = 2.5 * max(_cos(img[i].tolist(), cand[i].tolist()), 0.0)
        r = max(max(_cos(cand[i].tolist(), x.tolist()) for x in refs[i]), 0.0)
        hm = 2 * c * r / (c + r) if c + r > 0 else 0.0
        assert clip_s[i].item() == pytest.approx(c, abs=1e-6)
        assert ref_s[i].item() == pytest.approx(hm, abs=1e-6)
    assert clip_s[1] == 0 and ref_s[2] == 0   # negative cosines are clipped at 0


def test_clip_scorer_uses_the_hessel_prefix(tiny_clip):
    model, _, tok = tiny_clip
    scorer = ClipScorer(model, tok)
    img = torch.randn(2, 3, 32, 32)
    feats = scorer.encode_images(img)
    clip_s, ref_s = scorer.score(feats, ["a cat", "a dog"], [["a kitten"], ["a puppy", "a hound"]])
    with torch.no_grad():
        t = model.encode_text(tok(["A photo depicts a cat", "A photo depicts a dog"]))
        r = [model.encode_text(tok(["A photo depicts a kitten"])),
             model.encode_text(tok(["A photo depicts a puppy", "A photo depicts a hound"]))]
    want_c, want_r = clip_scores(model.encode_image(img).detach(), t, r)
    torch.testing.assert_close(clip_s, want_c)
    torch.testing.assert_close(ref_s, want_r)


def test_bleu_cider_rouge_equal_pycocoevalcap_on_pretokenized_input():
    from pycocoevalcap.bleu.bleu import Bleu
    from pycocoevalcap.cider.cider import Cider
    from pycocoevalcap.rouge.rouge import Rouge

    m = coco_metrics(REFS, CANDS, pretokenized=True, meteor=False, spice=False)
    gts, res = {k: v for k, v in REFS.items()}, {k: [v] for k, v in CANDS.items()}
    bleu, _ = Bleu(4).compute_score(gts, res, verbose=0)
    for n in range(4):
        assert m[f"BLEU-{n + 1}"] == pytest.approx(100 * bleu[n])
    assert m["CIDEr"] == pytest.approx(100 * Cider().compute_score(gts, res)[0])
    assert m["ROUGE-L"] == pytest.approx(100 * Rouge().compute_score(gts, res)[0])
    assert m["tokenizer"] == "pretokenized" and "METEOR" not in m and m["skipped"] == []


def test_simple_tokenizer_path_and_spice_reporting():
    m = coco_metrics(REFS, {k: v.capitalize() + "." for k, v in CANDS.items()}, tokenizer="simple", meteor=False)
    ref = coco_metrics(REFS, CANDS, pretokenized=True, meteor=False, spice=False)
    assert m["tokenizer"] == "simple" and m["CIDEr"] == pytest.approx(ref["CIDEr"])
    ok, why = spice_status()
    if not ok:
        assert "SPICE" in why and any(s.startswith("SPICE") for s in m["skipped"])


@pytest.mark.parametrize("text, want", [
    ("A Dog, running.", "a dog running"),
    ("The man's hat isn't red!", "the man 's hat is n't red"),
    ("an 8-bit picture; (pixel art)", "an 8-bit picture pixel art"),
    ("two\nlines ... here", "two lines here"),
])
def test_simple_tokenize(text, want):
    assert simple_tokenize(text) == want


def test_vocab_size_and_self_bleu():
    assert vocab_size(["A dog.", "a dog runs", "a cat"]) == 4
    assert self_bleu(["a dog runs on the grass"] * 5) == pytest.approx(100.0)
    varied = ["a dog runs on the grass", "two men play football on a field", "a plate of rice and broccoli",
              "an airplane flies over the city", "a cat sleeps on a red sofa"]
    assert self_bleu(varied) < 20.0


def _need_java():
    import os
    import shutil

    if shutil.which("java") is None:
        if os.environ.get("CI"):
            pytest.fail("CI must test the PTB path: install Java (.ci/run does: apt-get install default-jre-headless)")
        pytest.skip("no Java here (CI installs it)")


def test_ptb_tokenizer_path_with_java():
    """pycocoevalcap's Stanford PTB tokenizer (Java): clitics split, brackets kept as -lrb-/-rrb-, punctuation
    dropped; the scores are labelled 'ptb', while the fallback is labelled and warned about."""
    from tasks.captioning.metrics import tokenize

    _need_java()
    caps = {"a": ["A man's dog, running (fast) isn't it."], "b": ['Two-headed "cats" sit; on a mat!']}
    out, used = tokenize(caps, "ptb")
    assert used == "ptb"
    assert out == {"a": ["a man 's dog running -lrb- fast -rrb- is n't it"], "b": ["two-headed cats sit on a mat"]}
    assert tokenize(caps, "auto")[1] == "ptb"
    m = coco_metrics(REFS, CANDS, tokenizer="auto", meteor=False, spice=False)
    assert m["tokenizer"] == "ptb" and "tokenizer_warning" not in m
    s = coco_metrics(REFS, CANDS, tokenizer="simple", meteor=False, spice=False)
    assert s["tokenizer"] == "simple" and "not PTB" in s["tokenizer_warning"]


def test_meteor_with_java():
    _need_java()
    m = coco_metrics(REFS, CANDS, tokenizer="ptb", meteor=True, spice=False)
    assert 0.0 < m["METEOR"] < 100.0
