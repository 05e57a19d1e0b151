"""Dreamer V3's losses and transforms as small pure functions of tensors (Hafner et al., 2023, section 2-3).

- symlog / symexp squash targets of unknown scale;
- two-hot encodings over 255 exponentially spaced bins give reward and critic a scale-free cross-entropy loss;
- the KL of the posterior from the prior with free bits and balancing trains dynamics and representation;
- :class:`PercentileNormalizer` scales returns by the 5th-95th percentile range (at least 1).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor


def symlog(x: Tensor) -> Tensor:
    """sign(x) * ln(|x| + 1): compresses large magnitudes, identity-like near 0."""
    return torch.sign(x) * torch.log1p(x.abs())


def symexp(x: Tensor) -> Tensor:
    """Inverse of :func:`symlog`: sign(x) * (exp(|x|) - 1)."""
    return torch.sign(x) * torch.expm1(x.abs())


def make_bins(n: int = 255, low: float = -20.0, high: float = 20.0, device: torch.device | str = "cpu") -> Tensor:
    """Bin centres in symlog space; symexp of them spans about +-5e8 in the raw scale."""
    return torch.linspace(low, high, n, device=device)


def _two_hot_parts(x: Tensor, bins: Tensor) -> tuple[Tensor, Tensor, Tensor]:
    """The two bins around ``x`` (clipped into the range) and the upper one's weight: ``(lo, hi, w_hi)``."""
    n = bins.shape[0]
    x = x.clamp(bins[0], bins[-1])
    hi = torch.bucketize(x, bins).clamp(1, n - 1)  # bins[hi - 1] <= x <= bins[hi]
    lo = hi - 1
    b_lo, b_hi = bins[lo], bins[hi]
    return lo, hi, (x - b_lo) / (b_hi - b_lo)


def two_hot(x: Tensor, bins: Tensor) -> Tensor:
    """Two-hot encoding of ``x`` (already in bin space) over sorted ``bins``: ``(*,) -> (*, n)``.

    The weight splits between the two nearest bins so that ``(two_hot(x) * bins).sum(-1) == x`` inside the range;
    values outside are clipped to the first or last bin.
    """
    lo, hi, w_hi = _two_hot_parts(x, bins)
    out = torch.zeros(*x.shape, bins.shape[0], dtype=x.dtype, device=x.device)
    out.scatter_(-1, lo.unsqueeze(-1), (1.0 - w_hi).unsqueeze(-1))
    out.scatter_add_(-1, hi.unsqueeze(-1), w_hi.unsqueeze(-1))
    return out


def two_hot_mean(logits: Tensor, bins: Tensor) -> Tensor:
    """Decode a two-hot head: the expected bin under ``softmax(logits)``, mapped back with symexp. ``(*, n) -> (*,)``"""
    return symexp(logits.softmax(-1) @ bins)


def two_hot_ce(logp: Tensor, target: Tensor, bins: Tensor) -> Tensor:
    """Cross-entropy of log-probabilities ``logp`` (*, n) against the two-hot of ``symlog(target)`` (*,).

    Reads the two bins' log-probabilities (``gather``) instead of building the ``(*, n)`` two-hot; one
    ``log_softmax`` can serve several targets.
    """
    lo, hi, w_hi = _two_hot_parts(symlog(target), bins)
    logp_lo = logp.gather(-1, lo.unsqueeze(-1)).squeeze(-1)
    logp_hi = logp.gather(-1, hi.unsqueeze(-1)).squeeze(-1)
    return -((1.0 - w_hi) * logp_lo + w_hi * logp_hi)


def two_hot_loss(logits: Tensor, target: Tensor, bins: Tensor) -> Tensor:
    """Cross-entropy of the head ``logits`` (*, n) against the two-hot of ``symlog(target)`` (*,); per element."""
    return two_hot_ce(F.log_softmax(logits, -1), target, bins)


def categorical_kl(p: Tensor, q: Tensor) -> Tensor:
    """KL(p || q) of independent categoricals given as probabilities ``(*, stoch, classes)`` (none of them 0, as
    with unimix), summed over the stochastic variables."""
    return (p * (p.log() - q.log())).sum((-2, -1))


def kl_loss(
    post: Tensor,
    prior: Tensor,
    free_nats: float = 1.0,
    dyn_scale: float = 0.5,
    rep_scale: float = 0.1,
) -> tuple[Tensor, Tensor]:
    """Balanced KL with free bits: ``dyn * max(free, KL(sg(post)||prior)) + rep * max(free, KL(post||sg(prior)))``.

    The dynamics term trains the prior towards the posterior, the smaller representation term the posterior towards
    the prior; below ``free_nats`` neither gets a gradient. ``post`` and ``prior`` are probabilities
    ``(*, stoch, classes)``. Returns (per-element loss, the raw KL for logging).
    """
    dyn = categorical_kl(post.detach(), prior)
    rep = categorical_kl(post, prior.detach())
    loss = dyn_scale * dyn.clamp(min=free_nats) + rep_scale * rep.clamp(min=free_nats)
    return loss, dyn.detach()


class PercentileNormalizer:
    """EMA of the 5th and 95th percentiles of the lambda-returns; ``scale()`` = max(1, P95 - P5).

    The state lives in tensors on the returns' device, so updating never waits for the device.
    """

    def __init__(self, decay: float = 0.99, low: float = 0.05, high: float = 0.95, max_scale: float = 1.0) -> None:
        self.decay = decay
        self.quantiles = torch.tensor([low, high])
        self.max_scale = max_scale
        self.values: Tensor = torch.zeros(2)

    def update(self, x: Tensor, reduce: object = None) -> None:
        """Fold the percentiles of ``x`` into the EMA; ``reduce(q)`` may average them over ranks first."""
        if self.values.device != x.device:
            self.values, self.quantiles = self.values.to(x.device), self.quantiles.to(x.device)
        q = torch.quantile(x.detach().flatten().float(), self.quantiles)
        if reduce is not None:
            q = reduce(q)  # type: ignore[operator]
        self.values = self.decay * self.values + (1.0 - self.decay) * q

    def scale(self) -> Tensor:
        return torch.clamp(self.values[1] - self.values[0], min=self.max_scale)

    def state_dict(self) -> dict[str, Tensor]:
        return {"values": self.values.detach().cpu()}

    def load_state_dict(self, state: dict[str, Tensor]) -> None:
        self.values = state["values"].clone().to(self.values.device)
