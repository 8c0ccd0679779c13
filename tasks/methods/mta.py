"""MTA (Zanella & Ben Ayed, CVPR'24): a robust MeanShift over the view embeddings; training-free, episodic."""
from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor

from rlcf import AdaptConfig, DiscretePolicy, Episode, Method, register_method

__all__ = ["MTA", "MTAOptions", "mta_mode"]


def mta_mode(feats: Tensor, logits: Tensor, lambda_y: float = 0.2, lambda_q: float = 4.0, max_iter: int = 5,
             tol: float = 1e-6, knn: float = 0.3) -> tuple[Tensor, Tensor]:
    """MTA's mode of the view embeddings and the views' inlierness scores (MaxZanella/MTA ``mta.py``).

    Per view ``i``: a bandwidth ``h_i = sqrt(mean of the squared distances to its int(knn * (N - 1)) nearest other
    views / 2)`` (at least one neighbour); an affinity ``A = softmax(logits) @ softmax(logits)^T``. Starting from
    view 0's embedding and uniform scores ``y = 1/N``, ``max_iter`` rounds of

    * the inlierness step: ``y = softmax((k(m) + lambda_q * A @ y) / lambda_y)`` (at most ``max_iter`` times, until
      ``|y - y_old| < tol``), with the Gaussian densities ``k_i(m) = exp(-|x_i - m|^2 / (2 h_i^2))``;
    * the mode step: ``m = normalize(sum_i k_i(m) y_i x_i / sum_i k_i(m) y_i)`` (at most ``max_iter`` times, until
      ``|m - m_old| < tol``).

    Args:
        feats: ``[N, D]`` normalised view embeddings (view 0 is the clean one).
        logits: ``[N, C]`` their logits (``logit_scale * cos``), temperature 1.
        lambda_y, lambda_q: the entropic and the text-affinity weights (official 0.2 and 4).
        max_iter: rounds, and the cap of each inner loop (official 5).
        tol: the inner loops' convergence threshold (official 1e-6).
        knn: the fraction of the other views that sets each bandwidth (official 0.3).
    Returns:
        ``([D] mode, [N] inlierness scores)``; one view: its own embedding and score 1.
    """
    x = feats.float()
    n = x.shape[0]
    if n < 2:
        return x[0], torch.ones(1, device=x.device)
    k = max(1, int(knn * (n - 1)))   # official int(knn * (N - 1)): no neighbour, a NaN bandwidth, below 5 views
    dist = torch.cdist(x, x)
    nearest = torch.sort(dist, dim=1).values[:, 1:k + 1] ** 2      # the distance to itself excluded
    h = torch.sqrt(0.5 * nearest.mean(1))
    p = logits.float().softmax(1)
    affinity = p @ p.t()

    def density(m: Tensor) -> Tensor:
        return torch.exp(-((x - m).norm(dim=-1) ** 2) / (2 * h ** 2))

    y = torch.full((n,), 1.0 / n, device=x.device)
    mode = x[0]
    for _ in range(max_iter):
        dens = density(mode)
        for _ in range(max_iter):
            old = y
            y = F.softmax((dens + lambda_q * (affinity * y.unsqueeze(0)).sum(1)) / lambda_y, dim=-1)
            if torch.norm(old - y) < tol:
                break
        for _ in range(max_iter):
            old = mode
            w = density(mode) * y
            mode = (w.unsqueeze(1) * x).sum(0) / w.sum()
            mode = mode / mode.norm()
            if torch.norm(old - mode) < tol:
                break
    return mode, y


@dataclass(frozen=True)
class MTAOptions:
    """MTA's settings (official ``main.py`` defaults): ``lambda_y`` 0.2, ``lambda_q`` 4, ``max_iter`` 5."""

    lambda_y: float = 0.2
    lambda_q: float = 4.0
    max_iter: int = 5
    tol: float = 1e-6
    knn: float = 0.3


@register_method("mta")
class MTA(Method):
    """MTA (Zanella & Ben Ayed, CVPR'24): the prediction is the text similarity of the robust MeanShift mode of all
    views (inlierness scores from a Gaussian density and a text-affinity term). Episodic, no backward pass, no view
    filtering (``config.selection`` is not read)."""

    Options = MTAOptions
    default_config = AdaptConfig(steps=0, selection=1.0)

    @classmethod
    def supports(cls, policy) -> bool:
        return isinstance(policy, DiscretePolicy)

    def predict(self, ep: Episode) -> Tensor:
        p, o = self.policy, self.options
        q = (p.encode_query(ep.inputs) if p.query_trainable else p.frozen_query(ep)).float()
        mode, y = mta_mode(q, p.logits(q).float(), o.lambda_y, o.lambda_q, o.max_iter, o.tol, o.knn)
        ep.info["inlierness_max"] = float(y.max())
        return p.logits(mode.unsqueeze(0))[0].float()
