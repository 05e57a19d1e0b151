"""Value-based heads: factorized noisy linear layers and the dueling aggregation.

``NoisyLinear``: Fortunato et al., 2018, "Noisy Networks for Exploration", factorized Gaussian noise (Sec. 3.2).
``dueling``: Wang et al., 2016, "Dueling Network Architectures for Deep Reinforcement Learning", Eq. 9.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import Tensor, nn

__all__ = ["NoisyLinear", "dueling", "reset_noise"]


def dueling(value: Tensor, advantage: Tensor, action_dim: int = -1) -> Tensor:
    """Q(s, a) = V(s) + A(s, a) - mean_a' A(s, a'), the mean taken over ``action_dim``.

    Scalar Q-values: ``value`` (B, 1), ``advantage`` (B, A). Distributional ones (per-atom logits, as in Rainbow):
    ``value`` (B, 1, atoms), ``advantage`` (B, A, atoms), ``action_dim=-2``.
    """
    return value + advantage - advantage.mean(dim=action_dim, keepdim=True)


def _scaled_noise(size: int, generator: torch.Generator | None, device: torch.device) -> Tensor:
    """f(x) = sign(x) sqrt(|x|), x ~ N(0, 1): the factorized noise of the paper."""
    x = torch.randn(size, generator=generator, device=device)
    return x.sign() * x.abs().sqrt()


class NoisyLinear(nn.Module):
    """y = (mu_w + sigma_w * eps_w) x + mu_b + sigma_b * eps_b, with eps_w = f(eps_out) f(eps_in)^T.

    The noise is drawn by :meth:`reset_noise` (once per forward pass of a batch, as in the paper) and kept in
    buffers; in ``eval()`` mode the layer is deterministic (mean weights), which is the greedy policy.
    """

    def __init__(self, in_features: int, out_features: int, sigma0: float = 0.5) -> None:
        super().__init__()
        self.in_features, self.out_features = in_features, out_features
        self.sigma0 = float(sigma0)
        self.weight_mu = nn.Parameter(torch.empty(out_features, in_features))
        self.weight_sigma = nn.Parameter(torch.empty(out_features, in_features))
        self.bias_mu = nn.Parameter(torch.empty(out_features))
        self.bias_sigma = nn.Parameter(torch.empty(out_features))
        self.register_buffer("eps_in", torch.zeros(in_features))
        self.register_buffer("eps_out", torch.zeros(out_features))
        self.reset_parameters()

    def reset_parameters(self) -> None:
        # mu ~ U(-1/sqrt(p), 1/sqrt(p)), sigma = sigma0 / sqrt(p)  (factorized case, Sec. 3.2)
        bound = 1.0 / math.sqrt(self.in_features)
        self.weight_mu.data.uniform_(-bound, bound)
        self.bias_mu.data.uniform_(-bound, bound)
        self.weight_sigma.data.fill_(self.sigma0 / math.sqrt(self.in_features))
        self.bias_sigma.data.fill_(self.sigma0 / math.sqrt(self.in_features))

    @torch.no_grad()
    def reset_noise(self, generator: torch.Generator | None = None) -> None:
        """Draw new factorized noise (in place, so DDP and optimizers keep seeing the same tensors)."""
        self.eps_in.copy_(_scaled_noise(self.in_features, generator, self.eps_in.device))
        self.eps_out.copy_(_scaled_noise(self.out_features, generator, self.eps_out.device))

    def forward(self, x: Tensor) -> Tensor:
        if not self.training:
            return F.linear(x, self.weight_mu, self.bias_mu)
        weight = self.weight_mu + self.weight_sigma * torch.outer(self.eps_out, self.eps_in)
        bias = self.bias_mu + self.bias_sigma * self.eps_out
        return F.linear(x, weight, bias)

    def extra_repr(self) -> str:
        return f"in_features={self.in_features}, out_features={self.out_features}, sigma0={self.sigma0}"


def reset_noise(module: nn.Module, generator: torch.Generator | None = None) -> None:
    """Redraw the noise of every :class:`NoisyLinear` inside ``module``."""
    for m in module.modules():
        if isinstance(m, NoisyLinear):
            m.reset_noise(generator)
