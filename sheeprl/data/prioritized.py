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

__all__ = ["PrioritizedReplayBuffer", "PrioritizedSampler", "beta_schedule", "last_rows"]


def beta_schedule(beta0: float, step: int, anneal_steps: int) -> float:
    """``beta0`` linearly annealed to 1 over ``anneal_steps`` (1 afterwards)."""
    return linear_schedule(beta0, 1.0, anneal_steps, step)


class PrioritizedSampler:
    """Priorities of ``capacity`` flat rows (``time * n_envs + env``) of any row-indexed storage.

    Use it beside a buffer whose rows it names (``ReplayBuffer``, ``FrameReplayBuffer``): call :meth:`on_add` with
    the rows each ``add`` wrote, :meth:`sample` for rows and weights, :meth:`update` with the new TD errors, and
    :meth:`remove` for rows the storage dropped. :class:`PrioritizedReplayBuffer` bundles it with a ReplayBuffer.

    Args:
        capacity: number of rows (``buffer_size * n_envs``).
        alpha: prioritization exponent (0 = uniform sampling, 1 = fully proportional).
        eps: added to every new priority so that no transition gets probability 0.
    """

    def __init__(self, capacity: int, alpha: float = 0.6, eps: float = 1e-6) -> None:
        if alpha < 0:
            raise ValueError(f"alpha must be >= 0, got {alpha}")
        if eps <= 0:
            raise ValueError(f"eps must be > 0, got {eps}")
        self.alpha = float(alpha)
        self.eps = float(eps)
        self.tree = SumTree(capacity)
        self.max_priority = 1.0  # largest |delta| + eps seen so far (before the alpha exponent)

    def on_add(self, rows: Tensor | np.ndarray) -> None:
        """Rows just (over)written: they enter at the largest priority seen so far."""
        rows = np.asarray(rows.cpu() if isinstance(rows, Tensor) else rows).reshape(-1)
        self.tree.update(rows, np.full(rows.size, self.max_priority**self.alpha))

    def remove(self, rows: Tensor | np.ndarray) -> None:
        """Rows that no longer hold a transition: probability 0 from now on."""
        rows = np.asarray(rows.cpu() if isinstance(rows, Tensor) else rows).reshape(-1)
        self.tree.update(rows, np.zeros(rows.size))

    def sample(self, batch_size: int, beta: float, generator: torch.Generator | None = None) -> tuple[Tensor, Tensor]:
        """``batch_size`` rows drawn by priority (stratified) and their importance weights (float32, CPU).

        The weights are normalized by the largest weight any stored row could get: w_i / max_j w_j =
        (p_min / p_i)^beta, where N and the total cancel out.
        """
        if batch_size <= 0:
            raise ValueError(f"batch_size must be positive, got {batch_size}")
        idx = self.tree.sample(batch_size, generator)
        weights = (self.tree.min / self.tree[idx]).pow_(beta).float()
        return idx, weights

    def update(self, rows: Tensor, td_errors: Tensor) -> None:
        """Set the priorities of ``rows`` to ``(|td_errors| + eps) ** alpha`` (vectorized, O(B log N))."""
        p = td_errors.detach().abs().double().cpu().numpy().reshape(-1) + self.eps
        self.max_priority = max(self.max_priority, float(p.max()))
        self.tree.update(rows.cpu().numpy(), p**self.alpha)

    def probabilities(self) -> Tensor:
        """P(i) of every row (for tests and diagnostics)."""
        leaves = self.tree.leaves()
        return leaves / leaves.sum()

    def state_dict(self) -> dict[str, Any]:
        return {"priorities": self.tree.leaves().clone(), "max_priority": self.max_priority, "alpha": self.alpha}

    def load_state_dict(self, state: Mapping[str, Any]) -> None:
        if "priorities" not in state:
            raise ValueError("the state has no priorities: it was saved without prioritized replay")
        self.tree.set_leaves(state["priorities"])
        self.max_priority = float(state["max_priority"])


class PrioritizedReplayBuffer(ReplayBuffer):
    """A :class:`ReplayBuffer` sampled in proportion to ``priority ** alpha`` (a :class:`PrioritizedSampler` inside).

    Args:
        buffer_size, n_envs, memmap, memmap_dir, obs_keys, device: as :class:`ReplayBuffer`.
        alpha: prioritization exponent (0 = uniform sampling, 1 = fully proportional).
        eps: added to every new priority so that no transition gets probability 0.
    """

    def __init__(self, buffer_size: int, n_envs: int = 1, alpha: float = 0.6, eps: float = 1e-6, **kwargs: Any):
        super().__init__(buffer_size, n_envs, **kwargs)
        self.sampler = PrioritizedSampler(self.buffer_size * self.n_envs, alpha, eps)

    @property
    def tree(self) -> SumTree:
        return self.sampler.tree

    @property
    def max_priority(self) -> float:
        return self.sampler.max_priority

    def add(self, data: DataLike) -> None:
        """Store ``(T, n_envs, *)`` steps as :meth:`ReplayBuffer.add` does; the new rows get the max priority."""
        super().add(data)
        steps = next(iter(data.values())).shape[0] if isinstance(data, Mapping) else data.batch_size[0]
        self.sampler.on_add(last_rows(self, int(steps)))

    def sample_indices(
        self, batch_size: int, beta: float, generator: torch.Generator | None = None
    ) -> tuple[Tensor, Tensor]:
        """``batch_size`` flat row indices drawn by priority and their importance weights, on the buffer's device."""
        if len(self) == 0:
            raise ValueError("cannot sample from an empty buffer")
        idx, weights = self.sampler.sample(batch_size, beta, generator)
        return idx.to(self.device), weights.to(self.device)

    def update_priorities(self, idx: Tensor, td_errors: Tensor) -> None:
        """Set the priorities of rows ``idx`` to ``(|td_errors| + eps) ** alpha``."""
        self.sampler.update(idx, td_errors)

    def probabilities(self) -> Tensor:
        return self.sampler.probabilities()

    # ------------------------------------------------------------------ checkpoints
    def state_dict(self) -> dict[str, Any]:
        """The stored steps (:meth:`ReplayBuffer.state_dict`) plus the priorities and the running max priority."""
        return {**super().state_dict(), **self.sampler.state_dict()}

    def load_state_dict(self, state: Mapping[str, Any]) -> None:
        super().load_state_dict(state)
        self.sampler.load_state_dict(state)


def last_rows(rb: Any, steps: int = 1) -> np.ndarray:
    """The flat rows (``time * n_envs + env``) that the last ``add`` of ``steps`` steps wrote into a ring buffer."""
    k = min(int(steps), rb.buffer_size)
    time_rows = (rb.pos - k + np.arange(k)) % rb.buffer_size
    return (time_rows[:, None] * rb.n_envs + np.arange(rb.n_envs)).reshape(-1)
