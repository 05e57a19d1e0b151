"""n-step transitions read from a replay buffer of one-step transitions, at sampling time.

The buffer stores every env step once: ``observations``, ``actions``, ``rewards``, ``terminated``, ``truncated``
and ``next_<key>`` for each observation key (the *real* next observation: the final one at an episode
end). For a sampled row ``(t, env)`` the n-step transition is

    R      = sum_{k=0}^{m-1} gamma^k r_{t+k}
    s'     = next_<key>[t + m - 1]
    gamma' = gamma^m * (1 - terminated_{t+m-1})          so that the target is R + gamma' * V(s')

with ``m = min(n, steps to the first episode end, inclusive, steps stored up to the newest)``. The window
stops at an episode end: a terminated end is not bootstrapped, a truncated end bootstraps from its real final
observation, and nothing crosses into the next episode. A window that reaches the newest stored step (its
successors are not played yet) is cut there and bootstraps from that step's next observation.

Why at sampling time rather than with a queue in front of the buffer: every step is stored the moment it is
played (no delay, nothing to flush at the end of a run or at a checkpoint), the priorities of a prioritized
buffer index the same rows as the data, and ``n`` can change without touching what is stored.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch
from torch import Tensor

from sheeprl.data.buffers import ReplayBuffer

__all__ = ["nstep_batch", "nstep_window", "uniform_rows"]


def nstep_window(
    rewards: Tensor, terminated: Tensor, dones: Tensor, available: Tensor, gamma: float
) -> tuple[Tensor, Tensor, Tensor]:
    """Fold ``(B, n)`` windows of rewards / terminated / dones into n-step returns.

    ``available[b]`` (1..n) is how many steps of window ``b`` are stored. Returns ``(returns, discounts, last)``:
    the discounted reward sums, ``gamma^m * (1 - terminated)`` at the closing step, and that step's offset
    ``m - 1`` (where the bootstrap observation is read).
    """
    B, n = rewards.shape
    steps = torch.arange(n, device=rewards.device)
    # The window closes at its first episode end or at its last stored step, whichever comes first.
    closes = dones.bool() | (steps[None, :] >= (available[:, None] - 1))
    last = closes.long().argmax(dim=1)  # the first True (there is always one)
    inside = steps[None, :] <= last[:, None]
    powers = gamma ** steps.to(rewards.dtype)
    returns = (rewards * powers * inside).sum(dim=1)
    term = terminated.gather(1, last[:, None]).squeeze(1).to(rewards.dtype)
    discounts = gamma ** (last + 1).to(rewards.dtype) * (1.0 - term)
    return returns, discounts, last


def uniform_rows(rb: ReplayBuffer, batch_size: int, generator: torch.Generator | None = None) -> Tensor:
    """``batch_size`` flat row indices (``time * n_envs + env``) drawn uniformly from the stored steps."""
    length = len(rb)
    if length == 0:
        raise ValueError("cannot sample from an empty buffer")
    device = generator.device if generator is not None else rb.device
    idx = torch.randint(length * rb.n_envs, (batch_size,), generator=generator, device=device).to(rb.device)
    if rb.full and rb.pos:  # chronological offset -> storage row, as ReplayBuffer.sample does
        idx = (idx + rb.pos * rb.n_envs) % (rb.buffer_size * rb.n_envs)
    return idx


def _rows(rb: Any, key: str, flat_idx: Tensor) -> Tensor:
    """Per-row values of ``key`` (not stacked frames) at flat rows, from a ReplayBuffer or a FrameReplayBuffer."""
    src = rb[key] if isinstance(rb, ReplayBuffer) else rb._rows[key]
    return src.view(rb.buffer_size * rb.n_envs, *src.shape[2:]).index_select(0, flat_idx.to(src.device))


def nstep_batch(
    rb: Any,
    flat_idx: Tensor,
    n: int,
    gamma: float,
    obs_keys: Sequence[str] = ("observations",),
    extra_keys: Sequence[str] = ("actions",),
) -> dict[str, Any]:
    """The n-step transitions starting at flat rows ``flat_idx`` (B,) of ``rb``.

    ``rb`` is a :class:`~sheeprl.data.ReplayBuffer` holding ``k`` and ``next_k`` for each obs key, or a
    :class:`~sheeprl.data.frames.FrameReplayBuffer` (stacked frames stored once); either must hold ``rewards``,
    ``terminated`` and ``truncated`` per row. Returns every ``k`` of ``obs_keys`` and ``next_k`` (read ``m - 1``
    steps later), ``extra_keys`` (at the first step), ``rewards`` (the n-step sums) and ``discounts``
    (``gamma^m * (1 - terminated)``), all with first dim B.
    """
    if n < 1:
        raise ValueError(f"n must be >= 1, got {n}")
    size, n_envs = rb.buffer_size, rb.n_envs
    flat_idx = flat_idx.long()
    time_row, env = flat_idx // n_envs, flat_idx % n_envs
    newest = (rb.pos - 1) % size
    available = ((newest - time_row) % size + 1).clamp(max=n)
    offsets = torch.arange(n, device=flat_idx.device)
    # Rows past the newest step are clamped onto it; nstep_window never reads them (they lie beyond `available`).
    k = torch.minimum(offsets[None, :], available[:, None] - 1)
    window = ((time_row[:, None] + k) % size) * n_envs + env[:, None]  # (B, n)
    flat_window = window.reshape(-1)
    shape = window.shape
    rewards = _rows(rb, "rewards", flat_window).view(shape).float()
    terminated = _rows(rb, "terminated", flat_window).view(shape).bool()
    dones = terminated | _rows(rb, "truncated", flat_window).view(shape).bool()
    returns, discounts, last = nstep_window(rewards, terminated, dones, available, gamma)
    next_rows = window.gather(1, last[:, None]).squeeze(1)
    out: dict[str, Any] = {"rewards": returns, "discounts": discounts}
    if isinstance(rb, ReplayBuffer):
        for key in obs_keys:
            out[key] = _rows(rb, key, flat_idx)
            out[f"next_{key}"] = _rows(rb, f"next_{key}", next_rows)
        for key in extra_keys:
            out[key] = _rows(rb, key, flat_idx)
        return out
    # Frame buffer: the first step's observation, and the closing step's next observation (its frames, once each).
    first = rb.get(flat_idx, sample_next_obs=False)
    closing = rb.get(next_rows, sample_next_obs=True)
    for key in obs_keys:
        out[key] = first[key]
        out[f"next_{key}"] = closing[f"next_{key}"]
    for key in extra_keys:
        out[key] = first[key]
    return out
