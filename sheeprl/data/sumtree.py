"""A sum tree (and its min twin) over ``capacity`` non-negative priorities, vectorized over batches.

The tree is one flat float64 tensor of ``2 * size`` nodes (``size`` = capacity rounded up to a power of two):
node 1 is the root, node ``i`` has children ``2i`` and ``2i + 1``, leaves sit at ``size .. 2 * size - 1``.
``update`` writes a batch of leaves and recomputes only their ancestors, one level at a time
(O(B log N)); ``find`` descends from the root for a batch of prefix sums at once (O(B log N)).
float64 keeps the prefix sums of a million priorities exact enough that no leaf of zero mass is ever found.
"""

from __future__ import annotations

import torch
from torch import Tensor


class SumTree:
    """Priorities ``p_0 .. p_{capacity-1}`` (all 0 at first) with their sum and minimum in O(1) and updates in O(log N).

    Args:
        capacity: number of leaves.
        device: where the tree lives (the buffer's device).
    """

    def __init__(self, capacity: int, device: str | torch.device = "cpu") -> None:
        if capacity <= 0:
            raise ValueError(f"capacity must be positive, got {capacity}")
        self.capacity = int(capacity)
        self.size = 1 << max(0, (self.capacity - 1).bit_length())
        self.depth = self.size.bit_length() - 1  # levels below the root
        self.device = torch.device(device)
        self.sums = torch.zeros(2 * self.size, dtype=torch.float64, device=self.device)
        # Minimum over the *positive* leaves (empty leaves hold +inf here), for the importance-weight normalizer.
        self.mins = torch.full((2 * self.size,), float("inf"), dtype=torch.float64, device=self.device)

    @property
    def total(self) -> float:
        """Sum of all priorities."""
        return float(self.sums[1])

    @property
    def min(self) -> float:
        """Smallest positive priority (inf when every leaf is empty)."""
        return float(self.mins[1])

    def __getitem__(self, idx: Tensor) -> Tensor:
        """The priorities of leaves ``idx``."""
        return self.sums[idx + self.size]

    def leaves(self) -> Tensor:
        """All ``capacity`` priorities (a view)."""
        return self.sums[self.size : self.size + self.capacity]

    def update(self, idx: Tensor, priorities: Tensor) -> None:
        """Set leaves ``idx`` to ``priorities`` (>= 0) and refresh their ancestors. Duplicate indices: the last wins."""
        idx = torch.as_tensor(idx, device=self.device).long().reshape(-1)
        p = torch.as_tensor(priorities, device=self.device, dtype=torch.float64).reshape(-1)
        if idx.numel() != p.numel():
            raise ValueError(f"got {idx.numel()} indices and {p.numel()} priorities")
        if idx.numel() == 0:
            return
        if bool((idx < 0).any()) or bool((idx >= self.capacity).any()):
            raise IndexError(f"leaf indices must lie in [0, {self.capacity})")
        if bool((p < 0).any()) or not bool(torch.isfinite(p).all()):
            raise ValueError("priorities must be finite and >= 0")
        nodes = idx + self.size
        # index_put_ with duplicate indices keeps one of the values; the parents are recomputed from the leaves
        # below, so the tree stays consistent whichever value is kept.
        self.sums[nodes] = p
        self.mins[nodes] = torch.where(p > 0, p, torch.full_like(p, float("inf")))
        nodes = torch.unique(nodes >> 1)
        for _ in range(self.depth):
            left = nodes << 1
            self.sums[nodes] = self.sums[left] + self.sums[left + 1]
            self.mins[nodes] = torch.minimum(self.mins[left], self.mins[left + 1])
            nodes = torch.unique(nodes >> 1)

    def rebuild(self) -> None:
        """Recompute every inner node from the leaves (after loading them from a checkpoint)."""
        for level in range(self.depth - 1, -1, -1):
            lo, hi = 1 << level, 1 << (level + 1)
            self.sums[lo:hi] = self.sums[2 * lo : 2 * hi : 2] + self.sums[2 * lo + 1 : 2 * hi : 2]
            self.mins[lo:hi] = torch.minimum(self.mins[2 * lo : 2 * hi : 2], self.mins[2 * lo + 1 : 2 * hi : 2])

    def set_leaves(self, priorities: Tensor) -> None:
        """Replace all ``capacity`` leaves at once and rebuild the tree (O(N))."""
        p = torch.as_tensor(priorities, device=self.device, dtype=torch.float64).reshape(-1)
        if p.numel() != self.capacity:
            raise ValueError(f"expected {self.capacity} priorities, got {p.numel()}")
        self.sums.zero_()
        self.mins.fill_(float("inf"))
        self.sums[self.size : self.size + self.capacity] = p
        self.mins[self.size : self.size + self.capacity] = torch.where(p > 0, p, torch.full_like(p, float("inf")))
        self.rebuild()

    def find(self, prefix: Tensor) -> Tensor:
        """Leaf index ``i`` with ``sum(p_<i) <= prefix < sum(p_<=i)`` for each value of ``prefix`` in [0, total)."""
        u = torch.as_tensor(prefix, device=self.device, dtype=torch.float64).reshape(-1).clone()
        nodes = torch.ones_like(u, dtype=torch.long)
        for _ in range(self.depth):
            left = nodes << 1
            left_sum = self.sums[left]
            # Step right when the prefix lies past the left subtree, but never into an empty right subtree
            # (rounding could otherwise land a prefix equal to the total on a zero leaf).
            right = (u >= left_sum) & (self.sums[left + 1] > 0)
            u = torch.where(right, u - left_sum, u)
            nodes = left + right.long()
        return nodes - self.size

    def sample(self, batch_size: int, generator: torch.Generator | None = None) -> Tensor:
        """``batch_size`` leaves drawn with probability proportional to their priority, one per equal-mass segment.

        Stratified (Schaul et al., 2016, App. B.2.1): the total mass is cut into ``batch_size`` segments and one
        prefix is drawn uniformly inside each, which lowers the variance of a batch against i.i.d. draws while
        every single draw keeps the marginal probability ``p_i / total``.
        """
        total = self.total
        if total <= 0:
            raise ValueError("cannot sample from a sum tree whose priorities are all 0")
        u = torch.rand(batch_size, generator=generator, dtype=torch.float64, device=self.device)
        prefix = (torch.arange(batch_size, dtype=torch.float64, device=self.device) + u) * (total / batch_size)
        return self.find(prefix.clamp_(max=total * (1 - 1e-12)))
