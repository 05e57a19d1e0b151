"""Action distributions as small functions on tensors.

``torch.distributions`` objects validate their arguments and build several tensors per call; on
the rollout hot path that costs about as much as the policy's forward pass (DESIGN.md, hot path).
These functions compute exactly the quantities the algorithms need and nothing else.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Optional

import numpy as np
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


# ------------------------------------------------------------------------------------------ numpy, for acting
# The same quantities on float32 numpy arrays, for the CPU acting path of small policies (``ParallelMLPs.numpy``):
# a numpy op costs ~1 us there against ~4 us for a torch op. The noise still comes from torch's generator, drawn
# with the same calls as the torch functions above, so a seeded run samples the same actions on either path and a
# checkpoint's RNG state covers both.


def np_categorical_sample(logits: np.ndarray) -> np.ndarray:
    """:func:`categorical_sample` on a numpy ``(rows, n)`` array: int64 ``(rows,)``."""
    u = torch.rand(logits.shape).numpy()
    # logits - log(-log(u)), in place: every numpy call costs ~1 us here, whatever the size.
    np.maximum(u, 1e-20, out=u)  # torch.rand is in [0, 1): the clamp at 1 of the torch version never acts
    np.log(u, out=u)
    np.negative(u, out=u)
    np.log(u, out=u)
    np.subtract(logits, u, out=u)
    return u.argmax(-1)


def np_categorical_log_prob(logits: np.ndarray, actions: np.ndarray) -> np.ndarray:
    """:func:`categorical_log_prob` of int ``actions (rows,)`` under numpy ``logits (rows, n)``."""
    z = logits - logits.max(-1, keepdims=True)
    return z[np.arange(len(actions)), actions] - np.log(np.exp(z).sum(-1))


def np_normal_sample(mean: np.ndarray, log_std: np.ndarray) -> np.ndarray:
    """:func:`normal_sample` on numpy arrays (``log_std`` broadcasts against ``mean``)."""
    return mean + torch.randn(mean.shape).numpy() * np.exp(log_std)


def np_normal_log_prob(mean: np.ndarray, log_std: np.ndarray, actions: np.ndarray) -> np.ndarray:
    """:func:`normal_log_prob` on numpy arrays, summed over the last dimension."""
    z = (actions - mean) * np.exp(-log_std)
    return (-0.5 * z * z - log_std - np.float32(0.5 * _LOG_2PI)).sum(-1)
