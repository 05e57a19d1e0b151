"""PPO's losses as pure functions of tensors (Schulman et al., 2017).

Every loss takes an optional ``mask`` (same shape as its inputs, 1 = a real step, 0 = padding): the mean then
runs over the real steps only, so padded steps of recurrent sequences carry zero weight. Without a mask the
losses are plain means, as before.
"""

from __future__ import annotations

from typing import Optional

import torch
from torch import Tensor

from sheeprl.utils.optim import schedule_factor


def masked_mean(x: Tensor, mask: Optional[Tensor] = None) -> Tensor:
    """``x.mean()``, or the mean over the entries where ``mask`` is nonzero."""
    if mask is None:
        return x.mean()
    mask = mask.to(x.dtype)
    return (x * mask).sum() / mask.sum().clamp_min(1.0)


def clip_at(clip_coef: float, schedule: str, iteration: int, num_iterations: int) -> float:
    """The surrogate clip of update ``iteration`` (1-based) of ``num_iterations``, scheduled as the learning rate
    is (``linear``: ``clip_coef * (1 - (iteration - 1) / num_iterations)``, SB3's ``lin_0.2``). Late in a run a
    small clip bounds how far one update can move a policy that already solves the task."""
    return float(clip_coef) * schedule_factor(schedule, 0.0, 0.0, num_iterations)(iteration - 1)


def policy_loss(
    new_logprobs: Tensor, old_logprobs: Tensor, advantages: Tensor, clip_coef: float, mask: Optional[Tensor] = None
) -> Tensor:
    """Clipped surrogate objective, negated for minimization:
    -E[min(r A, clip(r, 1 - eps, 1 + eps) A)] with r = pi_new(a|s) / pi_old(a|s).
    """
    ratio = torch.exp(new_logprobs - old_logprobs)
    unclipped = ratio * advantages
    clipped = torch.clamp(ratio, 1.0 - clip_coef, 1.0 + clip_coef) * advantages
    return -masked_mean(torch.min(unclipped, clipped), mask)


def value_loss(
    new_values: Tensor,
    old_values: Tensor,
    returns: Tensor,
    clip_coef: float,
    clip_vloss: bool,
    mask: Optional[Tensor] = None,
) -> Tensor:
    """0.5 * E[(V - R)^2]; with ``clip_vloss`` the pessimistic max of the clipped and unclipped errors."""
    unclipped = (new_values - returns).pow(2)
    if not clip_vloss:
        return 0.5 * masked_mean(unclipped, mask)
    clipped_values = old_values + torch.clamp(new_values - old_values, -clip_coef, clip_coef)
    clipped = (clipped_values - returns).pow(2)
    return 0.5 * masked_mean(torch.max(unclipped, clipped), mask)


def entropy_loss(entropy: Tensor, mask: Optional[Tensor] = None) -> Tensor:
    """Negative mean entropy: minimizing it (times ent_coef) encourages exploration."""
    return -masked_mean(entropy, mask)


def approx_kl(new_logprobs: Tensor, old_logprobs: Tensor, mask: Optional[Tensor] = None) -> Tensor:
    """Low-variance estimator of KL(old || new): E[(r - 1) - log r] (Schulman's k3)."""
    log_ratio = new_logprobs - old_logprobs
    return masked_mean((log_ratio.exp() - 1.0) - log_ratio, mask)
