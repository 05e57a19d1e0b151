"""Metric aggregation and TensorBoard logging.

Algorithms call ``aggregator.update(name, value)`` freely; values are averaged per logging
window and only rank 0 writes them. Across ranks, the set of names is synchronized first (an
episode may have ended on one rank only), then all (sum, count) pairs travel in one all-reduce:
one collective per window instead of one per metric, and no rank can wait on a metric another
rank never created. TensorBoard is imported lazily (the CLI's help must stay fast).
"""

from __future__ import annotations

import math
from typing import Any, Optional

import torch

from sheeprl.utils.distributed import all_gather_object, all_reduce_cpu, is_distributed


class MetricAggregator:
    """Running means of named scalars over a logging window, synchronized over ranks on ``compute``."""

    def __init__(self, sync: bool = True) -> None:
        self._sums: dict[str, float] = {}
        self._counts: dict[str, int] = {}
        self._sync = sync
        # The first non-finite loss seen (name, value); never reset: a diverged run must stop (see Run).
        self.nonfinite: Optional[tuple[str, float]] = None
        self.last_losses: dict[str, float] = {}  # the latest value of every Loss/* metric, for error messages

    def update(self, name: str, value: Any, count: int = 1) -> None:
        """Add ``value`` (a number, or a tensor whose mean is taken) with weight ``count``."""
        if isinstance(value, torch.Tensor):
            value = value.detach().float().mean().item()
        value = float(value)
        if name.startswith("Loss/"):
            self.last_losses[name] = value
            if self.nonfinite is None and not math.isfinite(value):
                self.nonfinite = (name, value)  # free: the value is on the host already
        self._sums[name] = self._sums.get(name, 0.0) + value * count
        self._counts[name] = self._counts.get(name, 0) + count

    def compute(self) -> dict[str, float]:
        """Mean of every metric over the window (and ranks). In a distributed run every rank must call it."""
        names = sorted(self._sums)
        if self._sync and is_distributed():
            # Host-side values: on the CPU-capable group (an NCCL-only group would refuse them).
            names = sorted(set().union(*all_gather_object(names)))
            stats = torch.tensor([[self._sums.get(n, 0.0), self._counts.get(n, 0)] for n in names], dtype=torch.float64)
            if names:
                all_reduce_cpu(stats)
        else:
            stats = torch.tensor([[self._sums[n], self._counts[n]] for n in names], dtype=torch.float64)
        return {n: float(s / c) for n, (s, c) in zip(names, stats.tolist(), strict=True) if c > 0}

    def reset(self) -> None:
        self._sums.clear()
        self._counts.clear()


class TensorBoardLogger:
    """A thin SummaryWriter wrapper that only writes on rank 0."""

    def __init__(self, log_dir: str, enabled: bool = True) -> None:
        self.log_dir = log_dir
        self._writer: Optional[Any] = None
        if enabled:
            from torch.utils.tensorboard import SummaryWriter

            self._writer = SummaryWriter(log_dir=log_dir)

    def log_metrics(self, metrics: dict[str, float], step: int) -> None:
        if self._writer is None:
            return
        for name, value in metrics.items():
            self._writer.add_scalar(name, value, step)

    def log_image(self, tag: str, image: Any, step: int) -> None:
        """A ``(C, H, W)`` image (uint8, or float in [0, 1])."""
        if self._writer is not None:
            self._writer.add_image(tag, image, step)

    def log_text(self, tag: str, text: str) -> None:
        if self._writer is not None:
            self._writer.add_text(tag, text)

    def flush(self) -> None:
        if self._writer is not None:
            self._writer.flush()

    def close(self) -> None:
        if self._writer is not None:
            self._writer.close()
            self._writer = None
