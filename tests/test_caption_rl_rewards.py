"""Caption RL rewards: the bidirectional contrastive reward and eq. 5 against hand computations, and the
CLIP-space discriminator on a toy real/fake set."""
from __future__ import annotations

import math

import pytest
import torch

from tasks.caption_rl.contrastive import bidirectional_contrastive_reward, normalized_contrastive_term
from tasks.caption_rl.gt.discriminator import CLIPDiscriminator, discriminator_step

# 3 texts (policy caption of image 0, its ground truth, a greedy caption of image 1) x 2 images
SIM = torch.tensor([[0.30, 0.10],
                    [0.20, 0.25],
                    [0.05, 0.15]])


def _lse(*xs: float) -> float:
    return math.log(sum(math.exp(x) for x in xs))


def test_contrastive_reward_by_hand():
    s = 10.0   # small scale: no clamping
    got = bidirectional_contrastive_reward(SIM, torch.tensor([0, 1]), torch.tensor([0, 1]), scale=s, clamp=16.0)
    # pair (text 0, image 0): texts 1 and 2 compete at image 0; image 1 competes for text 0
    t0 = 3.0 - _lse(2.0, 0.5)
    i0 = 3.0 - _lse(1.0)
    # pair (text 1, image 1): texts 0 and 2 at image 1; image 0 for text 1
    t1 = 2.5 - _lse(1.0, 1.5)
    i1 = 2.5 - _lse(2.0)
    want = torch.tensor([(t0 + i0) / 2 / s, (t1 + i1) / 2 / s])
    torch.testing.assert_close(got, want)
    # one direction only, and the plain log-softmax variant (own entry in the denominators)
    text_only = bidirectional_contrastive_reward(SIM, torch.tensor([0]), torch.tensor([0]), scale=s, directions="text")
    torch.testing.assert_close(text_only, torch.tensor([t0 / s]))
    soft = bidirectional_contrastive_reward(SIM, torch.tensor([0]), torch.tensor([0]), scale=s, include_self=True)
    want_soft = ((3.0 - _lse(3.0, 2.0, 0.5)) + (3.0 - _lse(3.0, 1.0))) / 2 / s
    torch.testing.assert_close(soft, torch.tensor([want_soft]))


def test_contrastive_reward_clamp_and_scale():
    sim = torch.tensor([[0.9, 0.0], [0.0, 0.0]])
    got = bidirectional_contrastive_reward(sim, torch.tensor([0]), torch.tensor([0]))   # scale 100, clamp 16
    # both directions: 90 - log(exp 0) = 90 -> clamped to 16, / 100
    torch.testing.assert_close(got, torch.tensor([0.16]))
    free = bidirectional_contrastive_reward(sim, torch.tensor([0]), torch.tensor([0]), clamp=None)
    torch.testing.assert_close(free, torch.tensor([0.9]))
    # a tie against the others' total mass gives a negative reward
    even = bidirectional_contrastive_reward(torch.zeros(3, 3), torch.tensor([0]), torch.tensor([0]))
    torch.testing.assert_close(even, torch.tensor([-math.log(2) / 100]))


def test_normalized_contrastive_term_eq5():
    img = torch.tensor([[1.0, 0.0], [0.0, 1.0], [0.6, 0.8]])
    txt = torch.tensor([[0.8, 0.6], [0.0, 1.0], [1.0, 0.0]])
    s = img @ txt.t()   # already unit vectors: cosines
    d = torch.tensor([math.exp(s[k, k]) / torch.exp(s[:, k]).sum() * math.exp(s[k, k]) / torch.exp(s[k]).sum()
                      for k in range(3)])
    want = (d - d.mean()) / d.std()
    torch.testing.assert_close(normalized_contrastive_term(img, txt), want, atol=1e-5, rtol=1e-5)
    assert normalized_contrastive_term(img[:1], txt[:1]).tolist() == [0.0]


def test_discriminator_separates_toy_real_fake():
    torch.set_num_threads(1)
    g = torch.Generator().manual_seed(0)
    d = 8
    disc = CLIPDiscriminator(d, hidden=(32, 16))
    opt = torch.optim.Adam(disc.parameters(), lr=3e-3)
    offset = torch.randn(d, generator=g)

    def batch(n: int = 32):
        img = torch.randn(n, d, generator=g)
        real = img + 0.3 * torch.randn(n, d, generator=g)               # human captions: close to their image
        fake = torch.randn(n, d, generator=g) + 0.5 * offset             # generated: off-image, shifted
        return img, real, fake

    first = discriminator_step(disc, opt, *batch())
    for _ in range(150):
        discriminator_step(disc, opt, *batch())
    img, real, fake = batch(64)
    final = discriminator_step(disc, None, img, real, fake)   # scoring only
    assert final.accuracy > 0.9, (first.accuracy, final.accuracy)
    assert final.loss < 0.5 * first.loss
    assert final.p_real.mean() > 0.8 and final.p_fake.mean() < 0.2
    assert not final.p_real.requires_grad


def test_discriminator_scores_before_its_update():
    disc = CLIPDiscriminator(4, hidden=(8,))
    opt = torch.optim.Adam(disc.parameters(), lr=1e-2)
    img, real, fake = torch.randn(3, 4), torch.randn(3, 4), torch.randn(3, 4)
    with torch.no_grad():
        before = disc.human_prob(torch.cat([img, img]), torch.cat([fake, real]))
    st = discriminator_step(disc, opt, img, real, fake)
    torch.testing.assert_close(torch.cat([st.p_fake, st.p_real]), before)
    with torch.no_grad():
        after = disc.human_prob(torch.cat([img, img]), torch.cat([fake, real]))
    assert not torch.allclose(after, before)


@pytest.mark.parametrize("bad", [torch.zeros(1, 1)])
def test_contrastive_reward_needs_a_pool(bad):
    with pytest.raises(ValueError):
        bidirectional_contrastive_reward(bad, torch.tensor([0]), torch.tensor([0]))
