"""Replay buffers backed by preallocated ``(buffer_size, n_envs, *)`` tensors.

A buffer is a ring: ``add`` writes ``(T, n_envs, *)`` steps at ``pos`` and wraps around, so once ``full`` the
oldest step sits at ``pos``. Storage is allocated on the first ``add`` from the data's shapes and dtypes, either in
RAM (on ``device``) or as memory-mapped files under ``memmap_dir`` for buffers bigger than RAM.

Sampling draws *chronological* offsets (0 = oldest stored step) and maps them to storage rows, so what a seeded
sample returns does not depend on where the ring happens to start; this keeps a resumed run identical.
"""

from __future__ import annotations

import os
import re
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
from tensordict import MemoryMappedTensor, TensorDict, TensorDictBase

__all__ = ["ReplayBuffer", "SequentialReplayBuffer"]

DataLike = Mapping[str, "torch.Tensor | np.ndarray"] | TensorDictBase


class ReplayBuffer:
    """Circular buffer with preallocated ``(buffer_size, n_envs, *)`` storage (a TensorDict).

    Args:
        buffer_size: capacity in time steps (per env).
        n_envs: number of parallel environments; the second dim of every stored tensor.
        memmap: allocate every tensor as a memory-mapped file under ``memmap_dir`` (one ``<key>.memmap`` file per
            key; an existing file with that name is overwritten, so give each buffer its own folder).
        memmap_dir: folder of the memory-mapped files; required when ``memmap`` is true.
        obs_keys: keys that ``sample(..., sample_next_obs=True)`` also returns as ``next_<key>``.
        device: device of the storage (memory-mapped storage must be on the CPU).
    """

    def __init__(
        self,
        buffer_size: int,
        n_envs: int = 1,
        memmap: bool = False,
        memmap_dir: str | os.PathLike | None = None,
        obs_keys: Sequence[str] = ("state",),
        device: str | torch.device = "cpu",
    ) -> None:
        if buffer_size <= 0:
            raise ValueError(f"buffer_size must be positive, got {buffer_size}")
        if n_envs <= 0:
            raise ValueError(f"n_envs must be positive, got {n_envs}")
        self.device = torch.device(device)
        if memmap:
            if memmap_dir is None:
                raise ValueError("memmap=True needs a memmap_dir to write the buffer files into")
            if self.device.type != "cpu":
                raise ValueError(f"memory-mapped storage lives on the CPU, got device={self.device}")
        if isinstance(obs_keys, str):
            # A bare string would otherwise be read as a sequence of one-letter keys.
            obs_keys = (obs_keys,)
        self.buffer_size = int(buffer_size)
        self.n_envs = int(n_envs)
        self.memmap = bool(memmap)
        self.memmap_dir = Path(memmap_dir) if memmap_dir is not None else None
        self.obs_keys = tuple(obs_keys)
        self.pos = 0
        self.full = False
        # Plain tensors per key: dict lookups and tensor ops on them are much cheaper than going through the
        # TensorDict, which matters on the per-step add and the many-times-per-second sample.
        self._storage: dict[str, torch.Tensor] = {}
        # The same tensors viewed as (buffer_size * n_envs, *): one index_select per key gathers a whole batch.
        self._flat: dict[str, torch.Tensor] = {}
        # (1, n_envs, *) per key: the shape a single-step add must have to take the fast path.
        self._step_shape: dict[str, torch.Size] = {}
        # numpy views of CPU storage (same memory), for add_step: a numpy row write costs ~0.4 us, a torch one ~2 us.
        self._np_storage: dict[str, np.ndarray] = {}
        self._buffer = TensorDict({}, batch_size=(self.buffer_size, self.n_envs), device=self.device)

    # ------------------------------------------------------------------ properties
    @property
    def buffer(self) -> TensorDict:
        """The whole storage, shape ``(buffer_size, n_envs)``; empty (no keys) before the first ``add``."""
        return self._buffer

    def __len__(self) -> int:
        """Number of stored time steps (per env)."""
        return self.buffer_size if self.full else self.pos

    def __getitem__(self, key: str) -> torch.Tensor:
        """The storage tensor of ``key``, shape ``(buffer_size, n_envs, *)``."""
        try:
            return self._storage[key]
        except KeyError:
            raise KeyError(f"key {key!r} is not in the buffer (keys: {sorted(self._storage)})") from None

    def keys(self) -> list[str]:
        """The stored keys (empty before the first ``add``)."""
        return list(self._storage)

    def __repr__(self) -> str:
        where = f"memmap_dir={str(self.memmap_dir)!r}" if self.memmap else f"device={self.device}"
        return (
            f"{type(self).__name__}(buffer_size={self.buffer_size}, n_envs={self.n_envs}, len={len(self)}, "
            f"pos={self.pos}, full={self.full}, keys={self.keys()}, {where})"
        )

    # ------------------------------------------------------------------ storage
    def _allocate(self, specs: Mapping[str, tuple[torch.Size, torch.dtype]]) -> None:
        """Create the storage for ``key -> (per-step shape after n_envs, dtype)``."""
        if self.memmap:
            assert self.memmap_dir is not None
            self.memmap_dir.mkdir(parents=True, exist_ok=True)
        used_files: set[str] = set()
        for key, (shape, dtype) in specs.items():
            full_shape = (self.buffer_size, self.n_envs, *shape)
            if self.memmap:
                fname = _file_name(key, used_files)
                mmt = MemoryMappedTensor.empty(full_shape, dtype=dtype, filename=self.memmap_dir / fname, existsok=True)
                # A plain-tensor view of the mapped file: same memory, without the subclass dispatch overhead.
                tensor = mmt.as_subclass(torch.Tensor)
                tensor.zero_()
            else:
                # Zeros rather than empty: the unused part of `buffer` is then harmless if someone reads it.
                tensor = torch.zeros(full_shape, dtype=dtype, device=self.device)
            self._storage[key] = tensor
            self._flat[key] = tensor.view(self.buffer_size * self.n_envs, *shape)
            self._step_shape[key] = torch.Size((1, self.n_envs, *shape))
        self._np_storage = {}
        if all(t.device.type == "cpu" and t.dtype != torch.bfloat16 for t in self._storage.values()):
            self._np_storage = {k: t.numpy() for k, t in self._storage.items()}
        self._buffer = TensorDict(dict(self._storage), batch_size=(self.buffer_size, self.n_envs), device=self.device)

    def _as_tensors(self, data: DataLike) -> dict[str, torch.Tensor]:
        """Turn the input into ``key -> tensor`` (numpy arrays are wrapped without a copy)."""
        if isinstance(data, TensorDictBase):
            out = {}
            for key, value in data.items():
                if isinstance(value, TensorDictBase):
                    raise ValueError(f"nested TensorDicts are not supported (key {key!r}); flatten_keys() first")
                out[key] = value
            return out
        if not isinstance(data, Mapping):
            raise TypeError(f"add() expects a mapping of key -> tensor/array or a TensorDict, got {type(data)}")
        return {k: _to_tensor(v) for k, v in data.items()}

    def _check(self, data: Mapping[str, torch.Tensor]) -> int:
        """Validate keys and shapes against the storage (or against each other before allocation); return T."""
        if not data:
            raise ValueError("add() got no data")
        steps = None
        for key, value in data.items():
            if value.ndim < 2 or value.shape[1] != self.n_envs:
                raise ValueError(
                    f"key {key!r}: expected shape (T, n_envs={self.n_envs}, ...), got {tuple(value.shape)}"
                )
            if steps is None:
                steps = value.shape[0]
            elif value.shape[0] != steps:
                raise ValueError(f"key {key!r} has {value.shape[0]} time steps, the other keys {steps}")
        if steps == 0:
            raise ValueError("add() got zero time steps")
        if self._storage:
            if data.keys() != self._storage.keys():
                missing = sorted(set(self._storage) - set(data))
                extra = sorted(set(data) - set(self._storage))
                raise ValueError(f"keys do not match the buffer's: missing {missing}, unexpected {extra}")
            for key, value in data.items():
                expected = self._storage[key].shape[2:]
                if value.shape[2:] != expected:
                    raise ValueError(
                        f"key {key!r}: expected per-env shape {tuple(expected)}, got {tuple(value.shape[2:])}"
                    )
        return steps

    # ------------------------------------------------------------------ writing
    def add(self, data: DataLike) -> None:
        """Write ``(T, n_envs, *)`` steps at ``pos``, wrapping around; with ``T > buffer_size`` keep the last ones.

        The first call fixes the keys, per-step shapes and dtypes; later values are cast to the stored dtype.
        """
        if self._storage and type(data) is dict and len(data) == len(self._storage):
            # Hot path (one step per env step, as rollouts do): copy straight into storage views, no TensorDict.
            pairs = []
            for key, value in data.items():
                dst = self._storage.get(key)
                if dst is None:
                    break
                if isinstance(value, np.ndarray):
                    # from_numpy shares memory and is several times cheaper than as_tensor.
                    value = torch.from_numpy(value)
                elif not isinstance(value, torch.Tensor):
                    value = torch.as_tensor(value)
                if value.shape != self._step_shape[key]:
                    break
                if value.requires_grad:
                    # Copying a graph-attached value (e.g. a critic output) would chain the storage to the graph;
                    # detaching here is cheaper than a no_grad() block on every call.
                    value = value.detach()
                pairs.append((dst, value))
            else:
                # Every key is checked before any is written, so a bad call leaves the buffer untouched.
                # Slice assignment is the cheapest single-row copy in PyTorch (and casts dtype/device if needed).
                pos = self.pos
                end = pos + 1
                for dst, value in pairs:
                    dst[pos:end] = value
                self._advance(1)
                return
        tensors = self._as_tensors(data)
        steps = self._check(tensors)
        if not self._storage:
            self._allocate({k: (v.shape[2:], v.dtype) for k, v in tensors.items()})
        n = min(steps, self.buffer_size)
        # Writing T steps from pos leaves step t at row (pos + t) % size; only the last n survive.
        start = (self.pos + steps - n) % self.buffer_size
        first = min(n, self.buffer_size - start)
        with torch.no_grad():  # see the fast path: never attach the storage to a graph
            for key, value in tensors.items():
                dst = self._storage[key]
                value = value[steps - n :]
                dst[start : start + first].copy_(value[:first])
                if first < n:
                    dst[: n - first].copy_(value[first:])
        self._advance(steps)

    def add_step(self, data: Mapping[str, torch.Tensor | np.ndarray]) -> None:
        """Write one step of every env: each value shaped ``(n_envs, *)`` (``add`` without the leading T = 1).

        The rollout hot path: on CPU storage the rows are written through numpy views, several times cheaper than
        torch's indexing. Values are cast to the stored dtypes, as ``add`` does; the first call (which fixes the
        keys, shapes and dtypes) and anything unusual go through ``add``.
        """
        store = self._np_storage
        if store and len(data) == len(store) and type(self).add is ReplayBuffer.add:
            rows = []
            for key, value in data.items():
                dst = store.get(key)
                if dst is None:
                    break
                if isinstance(value, torch.Tensor):
                    if value.device.type != "cpu" or value.dtype == torch.bfloat16:
                        break
                    value = value.detach().numpy() if value.requires_grad else value.numpy()
                elif not isinstance(value, np.ndarray):
                    break
                if value.shape != dst.shape[1:]:
                    break
                rows.append((dst, value))
            else:
                # Every key is checked before any is written, so a bad call leaves the buffer untouched.
                pos = self.pos
                for dst, value in rows:
                    dst[pos] = value
                self._advance(1)
                return
        self.add({k: (torch.from_numpy(v) if isinstance(v, np.ndarray) else v)[None] for k, v in data.items()})

    def _advance(self, steps: int) -> None:
        if self.pos + steps >= self.buffer_size:
            self.full = True
        self.pos = (self.pos + steps) % self.buffer_size

    def reset(self) -> None:
        """Forget the stored steps (``pos=0``, ``full=False``); the storage is kept."""
        self.pos = 0
        self.full = False

    # ------------------------------------------------------------------ reading
    def _oldest(self) -> int:
        """Storage row of the oldest stored step."""
        return self.pos if self.full else 0

    def _randint(self, high: int, size: tuple[int, ...], generator: torch.Generator | None) -> torch.Tensor:
        """``randint`` on the generator's device (or the storage's), moved to the storage device."""
        device = generator.device if generator is not None else self.device
        return torch.randint(high, size, generator=generator, device=device).to(self.device, non_blocking=True)

    def _gather(self, flat_idx: torch.Tensor, batch_shape: tuple[int, ...], keys: Sequence[str]) -> dict:
        """``key -> storage rows`` for a flat ``time * n_envs + env`` index, reshaped to ``batch_shape``."""
        out = {}
        for key in keys:
            src = self._flat[key]
            out[key] = src.index_select(0, flat_idx).view(*batch_shape, *src.shape[1:])
        return out

    def sample(
        self,
        batch_size: int,
        sample_next_obs: bool = False,
        n_samples: int = 1,
        generator: torch.Generator | None = None,
    ) -> TensorDict:
        """Uniformly sample stored transitions (time step x env), with replacement.

        Returns a TensorDict of shape ``(n_samples, batch_size)``. With ``sample_next_obs`` it also holds
        ``next_<k>`` for every ``k`` in ``obs_keys``: the same env's value at the following step; the newest step
        of each env, whose successor is not stored yet, is then never sampled. Episode ends are respected, so the
        buffer must hold ``terminated`` and ``truncated`` flags: with SAME_STEP autoreset the row after an
        episode's last step holds the next episode's first observation, so a truncated step (whose real final
        observation is not stored) is never sampled, and a terminated step gets its own observation as
        ``next_<k>``, a placeholder that a bootstrapped target multiplies by ``1 - terminated``.
        """
        if batch_size <= 0 or n_samples <= 0:
            raise ValueError(f"batch_size and n_samples must be positive, got {batch_size} and {n_samples}")
        length = len(self)
        if length == 0:
            raise ValueError("cannot sample from an empty buffer")
        if sample_next_obs:
            missing = [k for k in self.obs_keys if k not in self._storage]
            if missing:
                raise ValueError(f"sample_next_obs: obs_keys {missing} are not in the buffer (keys: {self.keys()})")
            flags = [k for k in ("terminated", "truncated") if k not in self._storage]
            if flags:
                raise ValueError(f"sample_next_obs needs {flags} flags in the buffer to respect episode ends")
            length -= 1
            if length == 0:
                raise ValueError("sample_next_obs needs at least 2 stored steps (the newest has no successor yet)")
        # One draw over (time, env) pairs: in the flat (buffer_size * n_envs) view, row time * n_envs + env is
        # chronological offset r = (time - oldest) * n_envs + env, so a single randint + one gather per key suffice.
        rows = self.buffer_size * self.n_envs

        def draw(count: int) -> torch.Tensor:
            idx = self._randint(length * self.n_envs, (count,), generator)
            return idx.add_(self.pos * self.n_envs).remainder_(rows) if self.full and self.pos else idx

        flat_idx = draw(n_samples * batch_size)
        if sample_next_obs:
            for _ in range(1000):  # truncations are rare: a few redraws at most
                cut = self._flag(self._flat["truncated"], flat_idx)
                if not cut.any():
                    break
                flat_idx[cut] = draw(int(cut.sum()))
            else:
                raise ValueError("sample_next_obs: (almost) every stored step is truncated; nothing to sample")
        shape = (n_samples, batch_size)
        out = self._gather(flat_idx, shape, list(self._storage))
        if sample_next_obs:
            # The successor is the same env one time step later: n_envs rows further on, modulo the ring.
            next_idx = (flat_idx + self.n_envs).remainder_(rows)
            ended = self._flag(self._flat["terminated"], flat_idx).view(shape)
            for key, value in self._gather(next_idx, shape, self.obs_keys).items():
                mask = ended.view(*shape, *([1] * (value.ndim - 2)))
                out[f"next_{key}"] = torch.where(mask, out[key], value)
        return TensorDict(out, batch_size=shape, device=self.device)

    @staticmethod
    def _flag(src: torch.Tensor, flat_idx: torch.Tensor) -> torch.Tensor:
        """A per-row boolean from a stored flag of any dtype and trailing shape."""
        return src.index_select(0, flat_idx).reshape(flat_idx.numel(), -1).ne(0).any(-1)

    def to_dict(self) -> dict[str, torch.Tensor]:
        """A copy of the stored steps in chronological order, ``{key: (len(self), n_envs, *)}``.

        A copy rather than a view, so it stays valid while new steps overwrite the ring. Plain tensors: for
        algorithms that read a short rollout once per update (A2C), a TensorDict's bookkeeping costs more than
        the copy.
        """
        length = len(self)
        out = {}
        for key, src in self._storage.items():
            if self.full and self.pos > 0:
                out[key] = torch.cat((src[self.pos :], src[: self.pos]))
            else:
                out[key] = src[:length].clone()
        return out

    def to_tensordict(self) -> TensorDict:
        """:meth:`to_dict` as a TensorDict of batch size ``(len(self), n_envs)``."""
        return TensorDict(self.to_dict(), batch_size=(len(self), self.n_envs), device=self.device)

    # ------------------------------------------------------------------ checkpoints
    def state_dict(self) -> dict[str, Any]:
        """Stored data (in storage order) plus ``pos``/``full``: what ``load_state_dict`` needs to continue exactly.

        Holds only plain tensors, ints, bools and strings, so it loads with ``torch.load(weights_only=True)``.
        When the buffer is full the tensors share memory with the storage (as ``nn.Module.state_dict`` does);
        otherwise they are copies of the filled part (``torch.save`` of a slice would write the whole storage).
        """
        length = len(self)
        data = {k: (v if self.full else v[:length].clone()) for k, v in self._storage.items()}
        return {
            "buffer_size": self.buffer_size,
            "n_envs": self.n_envs,
            "obs_keys": list(self.obs_keys),
            "pos": self.pos,
            "full": self.full,
            "data": data,
        }

    def load_state_dict(self, state: Mapping[str, Any]) -> None:
        """Restore from :meth:`state_dict`; storage is allocated if needed (memory-mapped when ``memmap``)."""
        if state["buffer_size"] != self.buffer_size or state["n_envs"] != self.n_envs:
            raise ValueError(
                f"state is for buffer_size={state['buffer_size']}, n_envs={state['n_envs']}; "
                f"this buffer has buffer_size={self.buffer_size}, n_envs={self.n_envs}"
            )
        pos, full = int(state["pos"]), bool(state["full"])
        data: Mapping[str, torch.Tensor] = state["data"]
        length = self.buffer_size if full else pos
        if not 0 <= pos < self.buffer_size:
            raise ValueError(f"state has pos={pos}, outside [0, {self.buffer_size})")
        if not data:
            if length:
                raise ValueError("state has stored steps but no data")
            self.reset()
            return
        for key, value in data.items():
            if value.ndim < 2 or tuple(value.shape[:2]) != (length, self.n_envs):
                raise ValueError(
                    f"state key {key!r}: expected shape ({length}, {self.n_envs}, ...), got {tuple(value.shape)}"
                )
        if self._storage:
            if data.keys() != self._storage.keys():
                raise ValueError(f"state keys {sorted(data)} do not match the buffer's {sorted(self._storage)}")
            for key, value in data.items():
                if value.shape[2:] != self._storage[key].shape[2:]:
                    raise ValueError(
                        f"state key {key!r}: per-env shape {tuple(value.shape[2:])}, "
                        f"buffer has {tuple(self._storage[key].shape[2:])}"
                    )
        else:
            self._allocate({k: (v.shape[2:], v.dtype) for k, v in data.items()})
        for key, value in data.items():
            self._storage[key][:length].copy_(value)
        self.pos, self.full = pos, full


class SequentialReplayBuffer(ReplayBuffer):
    """A :class:`ReplayBuffer` that samples contiguous sequences of one env (for recurrent / world-model agents)."""

    def sample(  # type: ignore[override]
        self,
        batch_size: int,
        sequence_length: int,
        n_samples: int = 1,
        generator: torch.Generator | None = None,
    ) -> TensorDict:
        """Sample ``batch_size`` sequences of ``sequence_length`` consecutive steps, each from a single env.

        Returns a TensorDict of shape ``(n_samples, sequence_length, batch_size)``. A sequence never crosses the
        write position: it lies entirely within the stored steps, in chronological order.
        """
        if batch_size <= 0 or n_samples <= 0 or sequence_length <= 0:
            raise ValueError(
                "batch_size, sequence_length and n_samples must be positive, "
                f"got {batch_size}, {sequence_length} and {n_samples}"
            )
        length = len(self)
        if length == 0:
            raise ValueError("cannot sample from an empty buffer")
        if sequence_length > length:
            raise ValueError(f"sequence_length={sequence_length} exceeds the {length} stored steps")
        starts = self._randint(length - sequence_length + 1, (n_samples, 1, batch_size), generator)
        env_idx = self._randint(self.n_envs, (n_samples, 1, batch_size), generator)
        offsets = torch.arange(sequence_length, device=self.device).view(1, sequence_length, 1)
        time_idx = (starts + offsets + self._oldest()) % self.buffer_size
        flat_idx = (time_idx * self.n_envs + env_idx).reshape(-1)
        shape = (n_samples, sequence_length, batch_size)
        return TensorDict(self._gather(flat_idx, shape, list(self._storage)), batch_size=shape, device=self.device)


def _to_tensor(value: Any) -> torch.Tensor:
    """Wrap an array-like as a tensor without copying when possible."""
    if isinstance(value, torch.Tensor):
        return value
    if isinstance(value, np.ndarray):
        return torch.from_numpy(value)
    return torch.as_tensor(value)


def _file_name(key: str, used: set[str]) -> str:
    """A safe, unique file name for a key (keys may hold characters that paths cannot)."""
    base = re.sub(r"[^A-Za-z0-9_.-]", "_", key) or "key"
    name, i = base, 1
    while name in used:
        name, i = f"{base}_{i}", i + 1
    used.add(name)
    return f"{name}.memmap"
