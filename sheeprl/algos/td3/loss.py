"""TD3's losses as pure functions of tensors (Fujimoto et al., 2018; DDPG: Lillicrap et al., 2016)."""

from __future__ import annotations

import torch
from torch import Tensor


def smoothed_target_actions(
    next_actions: Tensor, noise: Tensor, noise_clip: Tensor | float, low: Tensor, high: Tensor
) -> Tensor:
    """Target policy smoothing: a' = clip(mu'(s') + clip(noise, -c, c), low, high); ``noise`` is already scaled."""
    return torch.clamp(next_actions + noise.clamp(-noise_clip, noise_clip), low, high)


def critic_target(rewards: Tensor, next_q: Tensor, terminated: Tensor, gamma: float) -> Tensor:
    """y = r + gamma * (1 - terminated) * min_i Q'_i(s', a') (clipped double Q; one critic = DDPG's target).

    ``next_q`` is ``(num_critics, B)``. A truncated transition is bootstrapped: its ``s'`` is the real final
    observation.
    """
    return rewards + gamma * (1.0 - terminated) * next_q.min(dim=0).values


def critic_loss(q: Tensor, target: Tensor) -> Tensor:
    """Sum over the critics of the mean squared TD errors; ``q`` is ``(num_critics, B)``."""
    return (q - target).pow(2).mean(dim=1).sum()


def actor_loss(q: Tensor) -> Tensor:
    """Deterministic policy gradient through the first critic only: -E[Q_1(s, mu(s))]."""
    return -q[0].mean()
