"""Rainbow's losses: the C51 projection and cross-entropy, and the scalar (Huber) case, pure functions of tensors."""

from __future__ import annotations

import torch
from torch import Tensor

from sheeprl.algos.dqn.loss import q_loss, td_target


@torch.no_grad()
def project_distribution(next_probs: Tensor, rewards: Tensor, discounts: Tensor, support: Tensor) -> Tensor:
    """Project r + discount * z onto the fixed support z (Bellemare et al., 2017, Algorithm 1).

    ``next_probs`` (B, atoms): the target distribution at s' for the chosen action; ``rewards`` and ``discounts``
    (B,) with ``discounts = gamma^n (1 - terminated)``. Each shifted atom's mass is split between its two
    neighbours on the support in proportion to closeness; mass beyond [v_min, v_max] goes to the end atoms.
    """
    atoms = support.numel()
    v_min, v_max = float(support[0]), float(support[-1])
    dz = (v_max - v_min) / (atoms - 1)
    tz = (rewards[:, None] + discounts[:, None] * support[None, :]).clamp(v_min, v_max)
    b = (tz - v_min) / dz
    lower, upper = b.floor().long(), b.ceil().long()
    # b on an atom exactly: lower == upper, and both weights below would be 0; move one neighbour so that the
    # whole mass lands on that atom.
    lower[(upper > 0) & (lower == upper)] -= 1
    upper[(lower < atoms - 1) & (lower == upper)] += 1
    out = torch.zeros_like(next_probs)
    out.scatter_add_(1, lower, next_probs * (upper.to(b.dtype) - b))
    out.scatter_add_(1, upper, next_probs * (b - lower.to(b.dtype)))
    return out


def distributional_loss(
    log_probs: Tensor, actions: Tensor, target: Tensor, weights: Tensor | None = None
) -> tuple[Tensor, Tensor]:
    """Cross-entropy -sum_i m_i log p_i(s, a) between the projected target ``m`` and the online distribution.

    Returns ``(loss, per-sample cross-entropy)``; the latter is Rainbow's priority (Hessel et al., 2018, Sec. 3).
    """
    idx = actions.long().view(-1, 1, 1).expand(-1, 1, log_probs.shape[-1])
    log_p_sa = log_probs.gather(1, idx).squeeze(1)
    per_sample = -(target * log_p_sa).sum(-1)
    loss = (per_sample * weights).mean() if weights is not None else per_sample.mean()
    return loss, per_sample.detach()


__all__ = ["distributional_loss", "project_distribution", "q_loss", "td_target"]
