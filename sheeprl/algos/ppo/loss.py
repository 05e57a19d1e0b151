"""PPO's losses as pure functions of tensors (Schulman et al., 2017)."""

from __future__ import annotations

import torch
from torch import Tensor


def policy_loss(new_logprobs: Tensor, old_logprobs: Tensor, advantages: Tensor, clip_coef: float) -> Tensor:
    """Clipped surrogate objective, negated for minimization:
    -E[min(r A, clip(r, 1 - eps, 1 + eps) A)] with r = pi_new(a|s) / pi_old(a|s).
    """
    ratio = torch.exp(new_logprobs - old_logprobs)
    unclipped = ratio * advantages
    clipped = torch.clamp(ratio, 1.0 - clip_coef, 1.0 + clip_coef) * advantages
    return -torch.min(unclipped, clipped).mean()


def value_loss(new_values: Tensor, old_values: Tensor, returns: Tensor, clip_coef: float, clip_vloss: bool) -> Tensor:
    """0.5 * E[(V - R)^2]; with ``clip_vloss`` the pessimistic max of the clipped and unclipped errors."""
    unclipped = (new_values - returns).pow(2)
    if not clip_vloss:
        return 0.5 * unclipped.mean()
    clipped_values = old_values + torch.clamp(new_values - old_values, -clip_coef, clip_coef)
    clipped = (clipped_values - returns).pow(2)
    return 0.5 * torch.max(unclipped, clipped).mean()


def entropy_loss(entropy: Tensor) -> Tensor:
    """Negative mean entropy: minimizing it (times ent_coef) encourages exploration."""
    return -entropy.mean()


def approx_kl(new_logprobs: Tensor, old_logprobs: Tensor) -> Tensor:
    """Low-variance estimator of KL(old || new): E[(r - 1) - log r] (Schulman's k3)."""
    log_ratio = new_logprobs - old_logprobs
    return ((log_ratio.exp() - 1.0) - log_ratio).mean()
