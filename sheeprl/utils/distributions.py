"""Action distributions as small functions on tensors.

``torch.distributions`` objects validate their arguments and build several tensors per call; on
the rollout hot path that costs about as much as the policy's forward pass (DESIGN.md, hot path).
These functions compute exactly the quantities the algorithms need and nothing else.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Optional

import torch
import torch.nn.functional as F
from torch import Tensor

_LOG_2PI = math.log(2.0 * math.pi)
_LOG_2 = math.log(2.0)


# ------------------------------------------------------------------------------------------ categorical


def categorical_sample(logits: Tensor, generator: Optional[torch.Generator] = None) -> Tensor:
    """Sample indices from unnormalized logits ``(..., n)`` (Gumbel-max trick), returns int64 ``(...)``."""
    u = torch.rand(logits.shape, dtype=logits.dtype, device=logits.device, generator=generator)
    return torch.argmax(logits - torch.log(-torch.log(u.clamp_(1e-20, 1.0))), dim=-1)


def categorical_log_prob(logits: Tensor, actions: Tensor) -> Tensor:
    log_probs = F.log_softmax(logits, dim=-1)
    return log_probs.gather(-1, actions.long().unsqueeze(-1)).squeeze(-1)


def categorical_entropy(logits: Tensor) -> Tensor:
    log_probs = F.log_softmax(logits, dim=-1)
    return -(log_probs.exp() * log_probs).sum(-1)


def split_logits(logits: Tensor, nvec: Sequence[int]) -> Sequence[Tensor]:
    """MultiDiscrete: one logits tensor per sub-action."""
    return torch.split(logits, list(nvec), dim=-1)


# ------------------------------------------------------------------------------------------ gaussian


def normal_sample(mean: Tensor, log_std: Tensor, generator: Optional[torch.Generator] = None) -> Tensor:
    noise = torch.randn(mean.shape, dtype=mean.dtype, device=mean.device, generator=generator)
    return mean + noise * log_std.exp()


def normal_log_prob(mean: Tensor, log_std: Tensor, actions: Tensor) -> Tensor:
    """Log density of a diagonal Gaussian, summed over the last (action) dimension."""
    z = (actions - mean) * torch.exp(-log_std)
    return (-0.5 * z.pow(2) - log_std - 0.5 * _LOG_2PI).sum(-1)


def normal_entropy(log_std: Tensor) -> Tensor:
    return (log_std + 0.5 * (1.0 + _LOG_2PI)).sum(-1)


# ------------------------------------------------------------------------------------------ tanh-gaussian


def tanh_normal_rsample(mean: Tensor, log_std: Tensor) -> tuple[Tensor, Tensor]:
    """Reparameterized sample of tanh(N(mean, std)) and its log-probability (SAC's squashed Gaussian).

    log pi(a) = log N(u) - sum log(1 - tanh(u)^2), with the stable form
    log(1 - tanh(u)^2) = 2 * (log 2 - u - softplus(-2u)). Since u = mean + std * eps, the Gaussian term is
    log N(u) = sum(-eps^2 / 2 - log_std) - k/2 log(2 pi) exactly, with no division by std (fewer ops, and
    the same gradients as differentiating through (u - mean) / std).
    """
    eps = torch.randn_like(mean)
    u = torch.addcmul(mean, eps, log_std.exp())
    log_prob = -(0.5 * eps.square() + log_std + 2.0 * (_LOG_2 - u - F.softplus(-2.0 * u))).sum(-1)
    return torch.tanh(u), log_prob - 0.5 * _LOG_2PI * mean.shape[-1]
