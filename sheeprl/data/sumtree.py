"""A sum tree (and its min twin) over ``capacity`` non-negative priorities, vectorized over batches.

The tree is one flat float64 array of ``2 * size`` nodes (``size`` = capacity rounded up to a power of two):
node 1 is the root, node ``i`` has children ``2i`` and ``2i + 1``, leaves sit at ``size .. 2 * size - 1``.
``update`` writes a batch of leaves and recomputes only their ancestors, one level at a time
(O(B log N)); ``find`` descends from the root for a batch of prefix sums at once (O(B log N)).
float64 keeps the prefix sums of a million priorities exact enough that no leaf of zero mass is ever found.

The arrays are numpy rather than torch: a walk is ~20 levels of tiny vector ops per batch, where numpy's
per-call overhead is several times lower than torch's. Inputs and outputs are torch tensors.
"""

from __future__ import annotations

import numpy as np
import torch
from torch import Tensor


def _np(x: Tensor | np.ndarray, dtype: type) -> np.ndarray:
    if isinstance(x, Tensor):
        x = x.detach().cpu().numpy()
    return np.asarray(x, dtype=dtype).reshape(-1)


class SumTree:
    """Priorities ``p_0 .. p_{capacity-1}`` (all 0 at first) with their sum and minimum in O(1) and updates in O(log N).

    Args:
        capacity: number of leaves.
    """

    def __init__(self, capacity: int) -> None:
        if capacity <= 0:
            raise ValueError(f"capacity must be positive, got {capacity}")
        self.capacity = int(capacity)
        self.size = 1 << max(0, (self.capacity - 1).bit_length())
        self.depth = self.size.bit_length() - 1  # levels below the root
        self.sums = np.zeros(2 * self.size, dtype=np.float64)
        # Minimum over the *positive* leaves (empty leaves hold +inf here), for the importance-weight normalizer.
        self.mins = np.full(2 * self.size, np.inf, dtype=np.float64)

    @property
    def total(self) -> float:
        """Sum of all priorities."""
        return float(self.sums[1])

    @property
    def min(self) -> float:
        """Smallest positive priority (inf when every leaf is empty)."""
        return float(self.mins[1])

    def __getitem__(self, idx: Tensor) -> Tensor:
        """The priorities of leaves ``idx`` (float64 tensor)."""
        return torch.from_numpy(self.sums[_np(idx, np.int64) + self.size])

    def leaves(self) -> Tensor:
        """All ``capacity`` priorities (a float64 tensor sharing memory with the tree)."""
        return torch.from_numpy(self.sums[self.size : self.size + self.capacity])

    def update(self, idx: Tensor | np.ndarray, priorities: Tensor | np.ndarray) -> None:
        """Set leaves ``idx`` to ``priorities`` (>= 0) and refresh their ancestors. Duplicate indices: the last wins."""
        idx, p = _np(idx, np.int64), _np(priorities, np.float64)
        if idx.size != p.size:
            raise ValueError(f"got {idx.size} indices and {p.size} priorities")
        if idx.size == 0:
            return
        if idx.min() < 0 or idx.max() >= self.capacity:
            raise IndexError(f"leaf indices must lie in [0, {self.capacity})")
        if not np.isfinite(p).all() or p.min() < 0:
            raise ValueError("priorities must be finite and >= 0")
        nodes = idx + self.size
        self.sums[nodes] = p
        self.mins[nodes] = np.where(p > 0, p, np.inf)
        # Parents are recomputed from their children, so a parent listed twice just gets the same value twice.
        for _ in range(self.depth):
            nodes >>= 1
            left = nodes << 1
            self.sums[nodes] = self.sums[left] + self.sums[left + 1]
            self.mins[nodes] = np.minimum(self.mins[left], self.mins[left + 1])

    def rebuild(self) -> None:
        """Recompute every inner node from the leaves (after loading them from a checkpoint)."""
        for level in range(self.depth - 1, -1, -1):
            lo, hi = 1 << level, 1 << (level + 1)
            self.sums[lo:hi] = self.sums[2 * lo : 2 * hi : 2] + self.sums[2 * lo + 1 : 2 * hi : 2]
            self.mins[lo:hi] = np.minimum(self.mins[2 * lo : 2 * hi : 2], self.mins[2 * lo + 1 : 2 * hi : 2])

    def set_leaves(self, priorities: Tensor | np.ndarray) -> None:
        """Replace all ``capacity`` leaves at once and rebuild the tree (O(N))."""
        p = _np(priorities, np.float64)
        if p.size != self.capacity:
            raise ValueError(f"expected {self.capacity} priorities, got {p.size}")
        self.sums[:] = 0.0
        self.mins[:] = np.inf
        self.sums[self.size : self.size + self.capacity] = p
        self.mins[self.size : self.size + self.capacity] = np.where(p > 0, p, np.inf)
        self.rebuild()

    def find(self, prefix: Tensor | np.ndarray) -> Tensor:
        """Leaf index ``i`` with ``sum(p_<i) <= prefix < sum(p_<=i)`` for each value of ``prefix`` in [0, total)."""
        u = _np(prefix, np.float64).copy()
        nodes = np.ones(u.size, dtype=np.int64)
        for _ in range(self.depth):
            left = nodes << 1
            left_sum = self.sums[left]
            # Step right when the prefix lies past the left subtree, but never into an empty right subtree
            # (rounding could otherwise land a prefix equal to the total on a zero leaf).
            right = (u >= left_sum) & (self.sums[left + 1] > 0)
            u -= left_sum * right
            nodes = left + right
        return torch.from_numpy(nodes - self.size)

    def sample(self, batch_size: int, generator: torch.Generator | None = None) -> Tensor:
        """``batch_size`` leaves drawn with probability proportional to their priority, one per equal-mass segment.

        Stratified (Schaul et al., 2016, App. B.2.1): the total mass is cut into ``batch_size`` segments and one
        prefix is drawn uniformly inside each, which lowers the variance of a batch against i.i.d. draws while
        every single draw keeps the marginal probability ``p_i / total``. Draws come from torch's generator, so a
        run's seed fixes them.
        """
        total = self.total
        if total <= 0:
            raise ValueError("cannot sample from a sum tree whose priorities are all 0")
        u = torch.rand(batch_size, generator=generator, dtype=torch.float64).numpy()
        prefix = (np.arange(batch_size, dtype=np.float64) + u) * (total / batch_size)
        return self.find(np.minimum(prefix, total * (1 - 1e-12)))
