"""A2C's losses as pure functions of tensors (Mnih et al., 2016, synchronous variant).

The entropy bonus is PPO's :func:`sheeprl.algos.ppo.loss.entropy_loss`.
"""

from __future__ import annotations

import torch.nn.functional as F
from torch import Tensor


def policy_loss(logprobs: Tensor, advantages: Tensor) -> Tensor:
    """Vanilla policy gradient, negated for minimization: -E[log pi(a|s) * A] (advantages carry no gradient)."""
    return -(logprobs * advantages.detach()).mean()


def value_loss(values: Tensor, returns: Tensor) -> Tensor:
    """E[(V - R)^2], the critic's regression on the n-step (or GAE) returns (as Stable-Baselines3 and SheepRL)."""
    return F.mse_loss(values, returns)
