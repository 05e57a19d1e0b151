"""Prioritized experience replay (Schaul et al., 2016, "Prioritized Experience Replay", Algorithm 1, proportional).

A :class:`PrioritizedReplayBuffer` is a :class:`~sheeprl.data.ReplayBuffer` whose stored rows (one per time step
and env, flat index ``time * n_envs + env``) carry a priority in a :class:`~sheeprl.data.sumtree.SumTree`:

    P(i) = p_i^alpha / sum_k p_k^alpha                     sampling probability (alpha = 0: uniform)
    w_i  = (N * P(i))^-beta / max_j w_j = (min_k P(k) / P(i))^beta      importance weight, at most 1
    p_i  <- |delta_i| + eps                                after the update that used row i
    new rows enter with the largest priority seen so far, so that every transition is replayed at least once.

``beta`` is annealed to 1 by the caller (:func:`beta_schedule`): the bias that prioritization introduces
matters most near convergence. Sampling returns *indices* and weights; the caller gathers what it needs
(one-step or n-step transitions, :mod:`sheeprl.data.nstep`) and hands the new priorities back.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import numpy as np
import torch
from torch import Tensor

from sheeprl.data.buffers import DataLike, ReplayBuffer
from sheeprl.data.sumtree import SumTree
from sheeprl.utils.schedules import linear_schedule

__all__ = ["PrioritizedReplayBuffer", "beta_schedule"]


def beta_schedule(beta0: float, step: int, anneal_steps: int) -> float:
    """``beta0`` linearly annealed to 1 over ``anneal_steps`` (1 afterwards)."""
    return linear_schedule(beta0, 1.0, anneal_steps, step)


class PrioritizedReplayBuffer(ReplayBuffer):
    """A replay buffer sampled in proportion to ``priority ** alpha``.

    Args:
        buffer_size, n_envs, memmap, memmap_dir, obs_keys, device: as :class:`ReplayBuffer`.
        alpha: prioritization exponent (0 = uniform sampling, 1 = fully proportional).
        eps: added to every new priority so that no transition gets probability 0.
    """

    def __init__(
        self,
        buffer_size: int,
        n_envs: int = 1,
        alpha: float = 0.6,
        eps: float = 1e-6,
        **kwargs: Any,
    ) -> None:
        super().__init__(buffer_size, n_envs, **kwargs)
        if alpha < 0:
            raise ValueError(f"alpha must be >= 0, got {alpha}")
        if eps <= 0:
            raise ValueError(f"eps must be > 0, got {eps}")
        self.alpha = float(alpha)
        self.eps = float(eps)
        # The tree lives on the CPU even for a GPU buffer: its walk is a few hundred tiny ops per batch.
        self.tree = SumTree(self.buffer_size * self.n_envs)
        self.max_priority = 1.0  # largest |delta| + eps seen so far (before the alpha exponent)

    def add(self, data: DataLike) -> None:
        """Store ``(T, n_envs, *)`` steps as :meth:`ReplayBuffer.add` does; the new rows get the max priority."""
        super().add(data)
        steps = next(iter(data.values())).shape[0] if isinstance(data, Mapping) else data.batch_size[0]
        k = min(int(steps), self.buffer_size)
        time_rows = (self.pos - k + np.arange(k)) % self.buffer_size
        rows = (time_rows[:, None] * self.n_envs + np.arange(self.n_envs)).reshape(-1)
        self.tree.update(rows, np.full(rows.size, self.max_priority**self.alpha))

    def sample_indices(
        self, batch_size: int, beta: float, generator: torch.Generator | None = None
    ) -> tuple[Tensor, Tensor]:
        """``batch_size`` flat row indices drawn by priority (stratified) and their importance weights (float32).

        Both are on the buffer's device; the weights are normalized by the largest weight any stored row could get.
        """
        if batch_size <= 0:
            raise ValueError(f"batch_size must be positive, got {batch_size}")
        if len(self) == 0:
            raise ValueError("cannot sample from an empty buffer")
        idx = self.tree.sample(batch_size, generator)
        # w_i / max_j w_j = (p_min / p_i)^beta: N and the total cancel out.
        weights = (self.tree.min / self.tree[idx]).pow_(beta).float()
        return idx.to(self.device), weights.to(self.device)

    def update_priorities(self, idx: Tensor, td_errors: Tensor) -> None:
        """Set the priorities of rows ``idx`` to ``(|td_errors| + eps) ** alpha`` (vectorized, O(B log N))."""
        p = td_errors.detach().abs().double().cpu().numpy().reshape(-1) + self.eps
        self.max_priority = max(self.max_priority, float(p.max()))
        self.tree.update(idx.cpu().numpy(), p**self.alpha)

    def probabilities(self) -> Tensor:
        """P(i) of every flat row (for tests and diagnostics)."""
        leaves = self.tree.leaves()
        return leaves / leaves.sum()

    # ------------------------------------------------------------------ checkpoints
    def state_dict(self) -> dict[str, Any]:
        """The stored steps (:meth:`ReplayBuffer.state_dict`) plus the priorities and the running max priority."""
        out = super().state_dict()
        out["priorities"] = self.tree.leaves().clone()
        out["max_priority"] = self.max_priority
        out["alpha"] = self.alpha
        return out

    def load_state_dict(self, state: Mapping[str, Any]) -> None:
        super().load_state_dict(state)
        if "priorities" not in state:
            raise ValueError("the state has no priorities: it was saved by a ReplayBuffer, not a prioritized one")
        self.tree.set_leaves(state["priorities"])
        self.max_priority = float(state["max_priority"])
