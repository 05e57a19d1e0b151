"""DroQ's losses (Hiraoka et al., 2022, Algorithm 2, built on REDQ, Chen et al., 2021).

The critic target and the temperature loss are SAC's: the target takes the minimum over the M = N = 2 dropout
critics. The actor differs from SAC's: it maximizes the *mean* of the ensemble's Q-values, not their minimum.
"""

from __future__ import annotations

from torch import Tensor

from sheeprl.algos.sac.loss import critic_loss, critic_target, entropy_loss

__all__ = ["actor_loss", "critic_loss", "critic_target", "entropy_loss"]


def actor_loss(log_prob: Tensor, q: Tensor, alpha: Tensor | float) -> Tensor:
    """E[alpha * log pi(a|s) - mean_i Q_i(s, a)], a ~ pi(s) reparameterized; ``q`` is ``(num_critics, B)``."""
    return (alpha * log_prob - q.mean(dim=0)).mean()
