"""DQN's loss: the TD target (plain or double) and the Huber loss, pure functions of tensors."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor


@torch.no_grad()
def td_target(rewards: Tensor, discounts: Tensor, next_q_target: Tensor, next_q_online: Tensor | None) -> Tensor:
    """y = r + discount * Q'(s', a*), a* = argmax_a Q'(s', a) (DQN) or argmax_a Q(s', a) (double DQN, van Hasselt
    et al., 2016, Eq. 4). ``discounts`` is gamma^n * (1 - terminated): 0 where the episode terminated."""
    source = next_q_online if next_q_online is not None else next_q_target
    best = source.argmax(dim=-1, keepdim=True)
    return rewards + discounts * next_q_target.gather(-1, best).squeeze(-1)


def q_loss(q: Tensor, actions: Tensor, target: Tensor, weights: Tensor | None = None) -> tuple[Tensor, Tensor]:
    """Huber loss between Q(s, a) and the target (Mnih et al., 2015: the error clipped to [-1, 1] in the gradient).

    Returns ``(loss, td_errors)``; ``weights`` (importance weights of prioritized replay) scale each sample.
    """
    q_sa = q.gather(-1, actions.long().view(-1, 1)).squeeze(-1)
    per_sample = F.smooth_l1_loss(q_sa, target, reduction="none")
    loss = (per_sample * weights).mean() if weights is not None else per_sample.mean()
    return loss, (target - q_sa).detach()
