"""A sequence replay buffer for world models: every env writes its own ring, windows carry ``is_first`` flags.

:class:`EnvSequenceBuffer` extends :class:`SequentialReplayBuffer` (same preallocated ``(size, n_envs, *)``
storage, in RAM or memory-mapped) with one write position per env. Dreamer's rows are
``(obs_t, action that led to obs_t, reward received with obs_t, terminated_t, is_first_t)``; at an episode end an
env writes two rows in one policy step (the real final observation, then the next episode's first one), so the
envs' positions drift apart and a shared position would not do.

``sample`` draws ``(T, B)`` windows, each from one env; a window never crosses that env's write position, and its
first row always has ``is_first`` set (the model starts from its initial state there). Rows inside the window where
a new episode begins keep the ``is_first`` stored with them, so no window runs from one episode into the next
unmarked. Frames are stored once (no ``next_obs``) in the dtype they come in (uint8 pixels stay uint8).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np
import torch
from tensordict import TensorDict

from sheeprl.data.buffers import DataLike, SequentialReplayBuffer

__all__ = ["EnvSequenceBuffer"]


class EnvSequenceBuffer(SequentialReplayBuffer):
    """:class:`SequentialReplayBuffer` with a write position per env and ``is_first``-aware sampling.

    Args: as :class:`~sheeprl.data.buffers.ReplayBuffer`; ``first_key`` names the flag column that ``sample`` sets
    on the first row of every window.
    """

    def __init__(self, *args: Any, first_key: str = "is_first", **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.first_key = first_key
        self.env_pos = np.zeros(self.n_envs, dtype=np.int64)
        self.env_full = np.zeros(self.n_envs, dtype=bool)

    # ------------------------------------------------------------------ lengths
    def env_lengths(self) -> np.ndarray:
        """Stored rows of every env."""
        return np.where(self.env_full, self.buffer_size, self.env_pos)

    def __len__(self) -> int:
        """Rows of the env that holds the fewest (every env can give a window this long)."""
        return int(self.env_lengths().min())

    # ------------------------------------------------------------------ writing
    def add(self, data: DataLike, env_ids: Sequence[int] | np.ndarray | None = None) -> None:  # type: ignore[override]
        """Write one row ``(1, len(env_ids), *)`` for the envs ``env_ids`` (all envs when None), each at its own
        position. Values are cast to the stored dtype; the first call fixes keys, shapes and dtypes."""
        ids = np.arange(self.n_envs) if env_ids is None else np.asarray(env_ids, dtype=np.int64).reshape(-1)
        tensors = self._as_tensors(data)
        for key, value in tensors.items():
            if value.ndim < 2 or value.shape[0] != 1 or value.shape[1] != len(ids):
                raise ValueError(f"key {key!r}: expected shape (1, {len(ids)}, ...), got {tuple(value.shape)}")
        if not self._storage:
            if len(ids) != self.n_envs:
                raise ValueError("the first add must write every env (it fixes the stored shapes)")
            self._allocate({k: (v.shape[2:], v.dtype) for k, v in tensors.items()})
        elif tensors.keys() != self._storage.keys():
            raise ValueError(f"keys {sorted(tensors)} do not match the buffer's {sorted(self._storage)}")
        rows = torch.from_numpy(self.env_pos[ids])
        cols = torch.from_numpy(ids)
        if self.device.type != "cpu":
            rows, cols = rows.to(self.device), cols.to(self.device)
        with torch.no_grad():
            for key, value in tensors.items():
                dst = self._storage[key]
                if value.shape[2:] != dst.shape[2:]:
                    raise ValueError(f"key {key!r}: per-env shape {tuple(value.shape[2:])}, stored {dst.shape[2:]}")
                dst[rows, cols] = value[0].to(device=dst.device, dtype=dst.dtype)
        self.env_pos[ids] += 1
        wrapped = self.env_pos[ids] >= self.buffer_size
        self.env_full[ids[wrapped]] = True
        self.env_pos[ids] %= self.buffer_size
        self.pos, self.full = int(self.env_pos.min()), bool(self.env_full.all())

    # ------------------------------------------------------------------ reading
    def sample(  # type: ignore[override]
        self,
        batch_size: int,
        sequence_length: int,
        n_samples: int = 1,
        generator: torch.Generator | None = None,
    ) -> TensorDict:
        """``batch_size`` windows of ``sequence_length`` consecutive rows of one env each, envs drawn uniformly.

        Returns a TensorDict ``(n_samples, sequence_length, batch_size)``; ``first_key`` is set on row 0.
        """
        if batch_size <= 0 or n_samples <= 0 or sequence_length <= 0:
            raise ValueError("batch_size, sequence_length and n_samples must be positive")
        lengths = self.env_lengths()
        if lengths.min() < sequence_length:
            raise ValueError(f"sequence_length={sequence_length} exceeds the {int(lengths.min())} rows of an env")
        n = n_samples * batch_size
        env_idx = torch.randint(self.n_envs, (n,), generator=generator)
        # Start offsets uniform in [0, len_e - T] of the chosen env, drawn as a fraction to stay batched.
        span = torch.from_numpy(lengths - sequence_length + 1)[env_idx]
        u = torch.rand(n, generator=generator, dtype=torch.float64)
        start = (u * span).long().clamp_(max=span - 1)
        oldest = torch.from_numpy(np.where(self.env_full, self.env_pos, 0))[env_idx]
        time_idx = (oldest + start).unsqueeze(0) + torch.arange(sequence_length).unsqueeze(1)  # (T, n)
        time_idx %= self.buffer_size
        flat_idx = (time_idx * self.n_envs + env_idx.unsqueeze(0)).view(sequence_length, n_samples, batch_size)
        flat_idx = flat_idx.permute(1, 0, 2).reshape(-1).to(self.device, non_blocking=True)
        shape = (n_samples, sequence_length, batch_size)
        out = self._gather(flat_idx, shape, list(self._storage))
        if self.first_key in out:
            first = out[self.first_key]
            first[:, 0] = 1
        return TensorDict(out, batch_size=shape, device=self.device)

    # ------------------------------------------------------------------ checkpoints
    def state_dict(self) -> dict[str, Any]:
        """Rows of every env plus the per-env positions (loads with ``weights_only=True``)."""
        data = {
            k: (v if self.env_full.any() else v[: int(self.env_pos.max())].clone()) for k, v in self._storage.items()
        }
        return {
            "buffer_size": self.buffer_size,
            "n_envs": self.n_envs,
            "env_pos": torch.from_numpy(self.env_pos.copy()),
            "env_full": torch.from_numpy(self.env_full.copy()),
            "data": data,
        }

    def load_state_dict(self, state: Mapping[str, Any]) -> None:
        if state["buffer_size"] != self.buffer_size or state["n_envs"] != self.n_envs:
            raise ValueError(
                f"state is for buffer_size={state['buffer_size']}, n_envs={state['n_envs']}; "
                f"this buffer has buffer_size={self.buffer_size}, n_envs={self.n_envs}"
            )
        data: Mapping[str, torch.Tensor] = state["data"]
        if not self._storage and data:
            self._allocate({k: (v.shape[2:], v.dtype) for k, v in data.items()})
        for key, value in data.items():
            self._storage[key][: value.shape[0]].copy_(value)
        self.env_pos = state["env_pos"].numpy().astype(np.int64).copy()
        self.env_full = state["env_full"].numpy().astype(bool).copy()
        self.pos, self.full = int(self.env_pos.min()), bool(self.env_full.all())
