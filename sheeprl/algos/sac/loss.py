"""SAC's losses as pure functions of tensors (Haarnoja et al., 2018a, 2018b)."""

from __future__ import annotations

import torch.nn.functional as F
from torch import Tensor


def critic_target(
    rewards: Tensor, next_q: Tensor, next_log_prob: Tensor, terminated: Tensor, gamma: float, alpha: Tensor | float
) -> Tensor:
    """Soft TD target y = r + gamma * (1 - terminated) * (min_i Q'_i(s', a') - alpha * log pi(a'|s')), a' ~ pi(s').

    ``next_q`` is ``(num_critics, B)``. Only ``terminated`` stops the bootstrap: a truncated transition's ``s'`` is
    its real final observation and is bootstrapped like any other.
    """
    soft_value = next_q.amin(dim=0) - alpha * next_log_prob
    return rewards + gamma * (1.0 - terminated) * soft_value


def critic_loss(q: Tensor, target: Tensor) -> Tensor:
    """Sum over the ensemble of the mean squared TD errors; ``q`` is ``(num_critics, B)``, ``target`` ``(B,)``."""
    return F.mse_loss(q, target.expand_as(q)) * q.shape[0]  # mean over E * B, times E


def actor_loss(log_prob: Tensor, q: Tensor, alpha: Tensor | float) -> Tensor:
    """E[alpha * log pi(a|s) - min_i Q_i(s, a)], a ~ pi(s) reparameterized; ``q`` is ``(num_critics, B)``."""
    return (alpha * log_prob - q.amin(dim=0)).mean()


def entropy_loss(log_alpha: Tensor, log_prob: Tensor, target_entropy: float) -> Tensor:
    """Temperature loss -E[log alpha * (log pi(a|s) + target_entropy)] (Haarnoja et al., 2018b, eq. 18).

    Its gradient raises alpha while the policy's entropy is below the target and lowers it above.
    """
    return -(log_alpha * (log_prob.detach() + target_entropy)).mean()
