"""A replay buffer for stacked pixel observations that stores every frame once.

An Atari observation is a stack of the last ``stack`` frames, ``(stack * C, H, W)`` uint8. A plain
:class:`~sheeprl.data.buffers.ReplayBuffer` would store each frame ``2 * stack`` times (once per stacked copy,
again as a "next observation"): 56 KB per 84x84x4 transition, 56 GB for 1M. :class:`FrameReplayBuffer` keeps one
ring of single frames and, per transition, the ids of the frames its two stacks are made of: ~7.3 KB per
transition (1M in ~7.3 GB, in RAM or memory-mapped).

API (the same ``add`` / ``sample`` calls as ``ReplayBuffer``, plus index hooks for prioritized replay)::

    rb = FrameReplayBuffer(buffer_size, n_envs, frame_keys=("rgb",), stack=4, memmap=False, memmap_dir=None)
    rb.add({                      # one step of all envs, every value (1, n_envs, *) (or (T, n_envs, *))
        "rgb": obs["rgb"],        # the stacked observation the agent acted on, (1, n_envs, stack * C, H, W)
        "next_rgb": real_next,    # the stacked next observation; at an episode end the REAL final one
        "actions": ..., "rewards": ..., "terminated": ..., "truncated": ...,   # any other keys, stored per row
    })                            # -> the flat rows written, time * n_envs + env (LongTensor (T * n_envs,))
    td = rb.sample(batch_size, sample_next_obs=True, n_samples=1)   # TensorDict (n_samples, batch_size)
    idx = rb.sample_indices(batch_size * n_samples)  # uniform flat rows of stored transitions
    td = rb.get(idx, sample_next_obs=True)           # TensorDict (len(idx),): rows by index (e.g. a sum tree's)
    rb.valid(idx)                                    # which flat rows currently hold a transition
    rb.next_row(idx)                                 # the same env's following transition (n-step look-ahead)

``td[k]`` is the stacked uint8 (or bool) observation ``(..., stack * C, H, W)`` exactly as the agent saw it,
``td["next_" + k]`` its next observation; every other key comes back as it was added. Frames stay in their
dtype: the encoder makes them float.

Episode ends. ``terminated | truncated`` (the ``done_keys``) at step t tells the buffer that the env's next
observation starts a new episode: the stacks of that env start over, so a stack never mixes two episodes, and
the next observation of a truncated step is the real final frame that was passed as ``next_<k>``. The frames of a
reset observation are written as they are (with Gymnasium's ``FrameStackObservation`` padding they are one
frame repeated, stored once). An env that marks ``terminated`` without resetting (life loss) is handled the same
way: its observation's frames are simply written again.

Capacity. ``buffer_size`` time steps per env, like ``ReplayBuffer``. The frame ring holds
``buffer_size * n_envs * (1 + extra_frames)`` frames; the extra share covers reset frames (one per episode). If
episodes are so short that it runs out, the oldest transitions are dropped early (``len`` tells the truth).

Bool frames (MinAtar's planes) are bit-packed: 8 cells per byte.

Rows. A flat row ``time * n_envs + env`` names one stored transition; ``next_row`` is ``row + n_envs`` modulo the
ring. Rows are stable until overwritten, so a priority kept per row stays attached to its transition; a row
becomes invalid when overwritten (``add`` returns the rows it wrote) or dropped (``valid`` is then false).
"""

from __future__ import annotations

import math
import os
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
from tensordict import MemoryMappedTensor, TensorDict, TensorDictBase

__all__ = ["FrameReplayBuffer"]


def _to_tensor(value: Any) -> torch.Tensor:
    if isinstance(value, torch.Tensor):
        return value.detach()
    if isinstance(value, np.ndarray):
        return torch.from_numpy(np.ascontiguousarray(value))
    return torch.as_tensor(value)


_BIT_WEIGHTS = torch.tensor([1, 2, 4, 8, 16, 32, 64, 128], dtype=torch.uint8)


def pack_bits(x: torch.Tensor) -> torch.Tensor:
    """``(N, *shape)`` bool -> ``(N, ceil(prod(shape) / 8))`` uint8, 8 cells per byte (little-endian bits)."""
    flat = x.reshape(x.shape[0], -1).to(torch.uint8)
    pad = (-flat.shape[1]) % 8
    if pad:
        flat = torch.nn.functional.pad(flat, (0, pad))
    weights = _BIT_WEIGHTS.to(x.device)
    return (flat.view(flat.shape[0], -1, 8) * weights).sum(-1, dtype=torch.uint8)


def unpack_bits(packed: torch.Tensor, shape: Sequence[int]) -> torch.Tensor:
    """Inverse of :func:`pack_bits`: ``(N, nbytes)`` uint8 -> ``(N, *shape)`` bool."""
    weights = _BIT_WEIGHTS.to(packed.device)
    bits = (packed.unsqueeze(-1) & weights) != 0
    n = math.prod(shape)
    return bits.view(packed.shape[0], -1)[:, :n].reshape(packed.shape[0], *shape)


class FrameReplayBuffer:
    """Ring of ``buffer_size`` steps x ``n_envs`` transitions whose stacked pixel keys share one frame ring.

    Args:
        buffer_size: capacity in time steps (per env).
        n_envs: number of parallel environments.
        frame_keys: the stacked pixel keys; each arrives as ``(T, n_envs, stack * C, H, W)`` (uint8 or bool).
        stack: frames per stacked observation (1 for unstacked observations such as MinAtar's).
        memmap: keep every tensor in a memory-mapped file under ``memmap_dir`` (one folder per buffer).
        memmap_dir: folder of the memory-mapped files; required with ``memmap``.
        device: where the storage lives (``cpu`` when memory-mapped).
        extra_frames: frame-ring capacity beyond one frame per transition, as a fraction (for reset frames).
        done_keys: keys whose OR marks the last step of an episode; each must be in every ``add``.
    """

    def __init__(
        self,
        buffer_size: int,
        n_envs: int = 1,
        frame_keys: Sequence[str] = ("rgb",),
        stack: int = 4,
        memmap: bool = False,
        memmap_dir: str | os.PathLike | None = None,
        device: str | torch.device = "cpu",
        extra_frames: float = 0.03,
        done_keys: Sequence[str] = ("terminated", "truncated"),
    ) -> None:
        if buffer_size <= 0 or n_envs <= 0 or stack <= 0:
            raise ValueError(f"buffer_size, n_envs and stack must be positive, got {buffer_size}, {n_envs}, {stack}")
        if extra_frames < 0:
            raise ValueError(f"extra_frames must be >= 0, got {extra_frames}")
        if isinstance(frame_keys, str):
            frame_keys = (frame_keys,)
        if isinstance(done_keys, str):
            done_keys = (done_keys,)
        if not frame_keys:
            raise ValueError("frame_keys must name at least one stacked pixel key")
        self.device = torch.device(device)
        if memmap and memmap_dir is None:
            raise ValueError("memmap=True needs a memmap_dir to write the buffer files into")
        if memmap and self.device.type != "cpu":
            raise ValueError(f"memory-mapped storage lives on the CPU, got device={self.device}")
        self.buffer_size, self.n_envs, self.stack = int(buffer_size), int(n_envs), int(stack)
        self.frame_keys, self.done_keys = tuple(frame_keys), tuple(done_keys)
        self.memmap, self.memmap_dir = bool(memmap), Path(memmap_dir) if memmap_dir is not None else None
        # Enough for one new frame per transition plus reset frames; at least one full step of stacks on top.
        self.frame_capacity = int(math.ceil(buffer_size * n_envs * (1.0 + extra_frames))) + (stack + 1) * n_envs
        self.pos = 0  # next time row to write
        self._len = 0  # stored (valid) time rows, the newest ending at pos - 1
        self.frames_written = 0  # the next frame id; frame id g lives in ring slot g % frame_capacity
        self._frames: dict[str, torch.Tensor] = {}  # key -> (frame_capacity, C, H, W) or packed (F, nbytes)
        self._frame_shape: dict[str, torch.Size] = {}  # key -> (C, H, W) of one frame
        self._frame_dtype: dict[str, torch.dtype] = {}
        self._rows: dict[str, torch.Tensor] = {}  # other keys -> (buffer_size, n_envs, *)
        self._obs_ids: torch.Tensor | None = None  # (buffer_size, n_envs, stack) frame ids of each observation
        self._next_id: torch.Tensor | None = None  # (buffer_size, n_envs) id of the next observation's newest frame
        self._row_min = torch.zeros(buffer_size, dtype=torch.int64)  # smallest frame id a time row refers to
        # The frame ids of every env's current stack (valid where _cur_ok): the next add's observation.
        self._cur = torch.zeros(n_envs, stack, dtype=torch.int64)
        self._cur_ok = torch.zeros(n_envs, dtype=torch.bool)

    # ------------------------------------------------------------------ properties
    @property
    def full(self) -> bool:
        return self._len == self.buffer_size

    def __len__(self) -> int:
        """Number of stored time steps (per env)."""
        return self._len

    def keys(self) -> list[str]:
        return [*self.frame_keys, *self._rows]

    def _oldest(self) -> int:
        return (self.pos - self._len) % self.buffer_size

    def nbytes(self) -> int:
        """Bytes of storage allocated (frames, frame ids and the other keys)."""
        tensors = [*self._frames.values(), *self._rows.values(), self._row_min]
        tensors += [t for t in (self._obs_ids, self._next_id) if t is not None]
        return sum(t.numel() * t.element_size() for t in tensors)

    def __repr__(self) -> str:
        return (
            f"FrameReplayBuffer(buffer_size={self.buffer_size}, n_envs={self.n_envs}, stack={self.stack}, "
            f"len={len(self)}, frame_keys={list(self.frame_keys)}, keys={self.keys()})"
        )

    # ------------------------------------------------------------------ storage
    def _empty(self, name: str, shape: tuple[int, ...], dtype: torch.dtype) -> torch.Tensor:
        if self.memmap:
            assert self.memmap_dir is not None
            self.memmap_dir.mkdir(parents=True, exist_ok=True)
            path = self.memmap_dir / f"{name.replace('/', '_')}.memmap"
            return MemoryMappedTensor.empty(shape, dtype=dtype, filename=path, existsok=True).as_subclass(torch.Tensor)
        return torch.zeros(shape, dtype=dtype, device=self.device)

    def _allocate(self, data: Mapping[str, torch.Tensor]) -> None:
        for key in self.frame_keys:
            value = data[key]
            if value.ndim != 5 or value.shape[2] % self.stack:
                raise ValueError(
                    f"frame key {key!r}: expected (T, n_envs, stack * C, H, W) with stack={self.stack}, "
                    f"got {tuple(value.shape)}"
                )
            frame = torch.Size((value.shape[2] // self.stack, *value.shape[3:]))
            self._frame_shape[key], self._frame_dtype[key] = frame, value.dtype
            if value.dtype == torch.bool:
                shape: tuple[int, ...] = (self.frame_capacity, math.ceil(math.prod(frame) / 8))
                self._frames[key] = self._empty(f"frames_{key}", shape, torch.uint8)
            else:
                self._frames[key] = self._empty(f"frames_{key}", (self.frame_capacity, *frame), value.dtype)
        for key, value in data.items():
            if key in self.frame_keys or key in self._next_keys:
                continue
            self._rows[key] = self._empty(f"row_{key}", (self.buffer_size, self.n_envs, *value.shape[2:]), value.dtype)
        self._obs_ids = self._empty("obs_ids", (self.buffer_size, self.n_envs, self.stack), torch.int64)
        self._next_id = self._empty("next_id", (self.buffer_size, self.n_envs), torch.int64)

    @property
    def _next_keys(self) -> tuple[str, ...]:
        return tuple(f"next_{k}" for k in self.frame_keys)

    def _check(self, data: Mapping[str, torch.Tensor]) -> int:
        need = [*self.frame_keys, *self._next_keys, *self.done_keys]
        missing = [k for k in need if k not in data]
        if missing:
            raise ValueError(f"add() is missing key(s) {missing} (frame keys, next_<frame key> and done keys)")
        steps = None
        for key, value in data.items():
            if value.ndim < 2 or value.shape[1] != self.n_envs:
                raise ValueError(f"key {key!r}: expected (T, n_envs={self.n_envs}, ...), got {tuple(value.shape)}")
            if steps is not None and value.shape[0] != steps:
                raise ValueError(f"key {key!r} has {value.shape[0]} time steps, the other keys {steps}")
            steps = value.shape[0]
        if self._rows or self._frames:
            expected = set(self.frame_keys) | set(self._next_keys) | set(self._rows)
            if set(data) != expected:
                raise ValueError(
                    f"keys do not match the buffer's: missing {sorted(expected - set(data))}, "
                    f"unexpected {sorted(set(data) - expected)}"
                )
            for key in self.frame_keys:
                want = (self.stack * self._frame_shape[key][0], *self._frame_shape[key][1:])
                for k in (key, f"next_{key}"):
                    if tuple(data[k].shape[2:]) != want:
                        raise ValueError(f"key {k!r}: expected per-env shape {want}, got {tuple(data[k].shape[2:])}")
        return int(steps or 0)

    # ------------------------------------------------------------------ writing
    def _write_frames(self, frames: Mapping[str, torch.Tensor]) -> torch.Tensor:
        """Append one frame per entry (``key -> (N, C, H, W)``); return their ids."""
        n = next(iter(frames.values())).shape[0]
        ids = torch.arange(self.frames_written, self.frames_written + n, dtype=torch.int64)
        slots = (ids % self.frame_capacity).to(self.device)
        for key, value in frames.items():
            value = value.to(self.device)
            if self._frame_dtype[key] == torch.bool:
                value = pack_bits(value.to(torch.bool))
            self._frames[key][slots] = value.to(self._frames[key].dtype)
        self.frames_written += n
        return ids

    def _start_stacks(self, obs: Mapping[str, torch.Tensor], envs: torch.Tensor) -> None:
        """Write the frames of the observations of ``envs`` (first steps of episodes) and set their stacks.

        A frame equal (in every key) to its newer neighbour in the stack reuses that one's id, so
        FrameStackObservation's padding (the reset frame repeated) costs one frame.
        """
        for env in envs.tolist():
            ids = [0] * self.stack
            newer: dict[str, torch.Tensor] | None = None
            for j in range(self.stack - 1, -1, -1):
                frame = {k: self._split(k, obs[k][env])[j] for k in self.frame_keys}
                if newer is not None and all(torch.equal(frame[k], newer[k]) for k in self.frame_keys):
                    ids[j] = ids[j + 1]
                else:
                    ids[j] = int(self._write_frames({k: v[None] for k, v in frame.items()})[0])
                newer = frame
            self._cur[env] = torch.tensor(ids, dtype=torch.int64)
        self._cur_ok[envs] = True

    def _split(self, key: str, stacked: torch.Tensor) -> torch.Tensor:
        """``(..., stack * C, H, W)`` -> ``(..., stack, C, H, W)``."""
        return stacked.reshape(*stacked.shape[:-3], self.stack, *self._frame_shape[key])

    def add(self, data: Mapping[str, Any] | TensorDictBase) -> torch.Tensor:
        """Write ``(T, n_envs, *)`` steps; return the flat rows written (``time * n_envs + env``), in order."""
        tensors = {k: _to_tensor(v) for k, v in data.items()}
        steps = self._check(tensors)
        if not self._frames:
            self._allocate(tensors)
        written = [self._add_step({k: v[t] for k, v in tensors.items()}) for t in range(steps)]
        return torch.cat(written)

    def _add_step(self, step: dict[str, torch.Tensor]) -> torch.Tensor:
        assert self._obs_ids is not None and self._next_id is not None
        fresh = torch.nonzero(~self._cur_ok).flatten()
        if fresh.numel():
            self._start_stacks(step, fresh)
        # The next observation is this one shifted by one frame: only its newest frame is new.
        newest = {k: self._split(k, step[f"next_{k}"])[:, -1] for k in self.frame_keys}
        new_ids = self._write_frames(newest)
        row = self.pos
        self._obs_ids[row] = self._cur.to(self._obs_ids.device)
        self._next_id[row] = new_ids.to(self._next_id.device)
        self._row_min[row] = int(self._cur[:, 0].min())
        for key, dst in self._rows.items():
            dst[row] = step[key].to(dst.device, dst.dtype)
        # Continue every stack; one whose episode ended starts over from the next add's observation.
        self._cur = torch.cat((self._cur[:, 1:], new_ids[:, None]), dim=1)
        done = torch.zeros(self.n_envs, dtype=torch.bool)
        for key in self.done_keys:
            done |= step[key].reshape(self.n_envs, -1).any(-1).cpu().bool()
        self._cur_ok &= ~done
        self.pos = (self.pos + 1) % self.buffer_size
        self._len = min(self._len + 1, self.buffer_size)
        self._drop_overwritten()
        return row * self.n_envs + torch.arange(self.n_envs, device=self.device)

    def _drop_overwritten(self) -> None:
        """Forget the oldest rows while one of them (or a row within a stack of it) refers to an overwritten frame."""
        alive_from = self.frames_written - self.frame_capacity
        while self._len:
            oldest = self._oldest()
            window = [(oldest + i) % self.buffer_size for i in range(min(self.stack, self._len))]
            if int(self._row_min[window].min()) >= alive_from:
                return
            self._len -= 1

    def reset(self) -> None:
        """Forget every stored step and every env's current stack (storage is kept)."""
        self.pos, self._len = 0, 0
        self._cur_ok[:] = False

    # ------------------------------------------------------------------ reading
    def sample_indices(self, n: int, generator: torch.Generator | None = None) -> torch.Tensor:
        """``n`` flat rows drawn uniformly (with replacement) among the stored transitions."""
        if n <= 0:
            raise ValueError(f"the number of samples must be positive, got {n}")
        if self._len == 0:
            raise ValueError("cannot sample from an empty buffer")
        device = generator.device if generator is not None else torch.device("cpu")
        offsets = torch.randint(self._len * self.n_envs, (n,), generator=generator, device=device).cpu()
        return (offsets + self._oldest() * self.n_envs) % (self.buffer_size * self.n_envs)

    def valid(self, rows: torch.Tensor) -> torch.Tensor:
        """Whether each flat row currently holds a stored transition."""
        time = torch.as_tensor(rows).cpu() // self.n_envs
        age = (self.pos - 1 - time) % self.buffer_size  # 0 for the newest time row
        return age < self._len

    def next_row(self, rows: torch.Tensor) -> torch.Tensor:
        """The same env's following transition (valid only if stored and the episode did not end at ``rows``)."""
        return (torch.as_tensor(rows) + self.n_envs) % (self.buffer_size * self.n_envs)

    def _frames_at(self, key: str, ids: torch.Tensor) -> torch.Tensor:
        """Frames ``ids`` (any shape ``S``) -> ``(*S, C, H, W)`` in the stored dtype."""
        slots = (ids % self.frame_capacity).reshape(-1).to(self.device)
        frames = self._frames[key].index_select(0, slots)
        if self._frame_dtype[key] == torch.bool:
            frames = unpack_bits(frames, self._frame_shape[key])
        return frames.view(*ids.shape, *self._frame_shape[key])

    def get(self, rows: torch.Tensor, sample_next_obs: bool = True) -> TensorDict:
        """The transitions at flat ``rows`` (shape ``S``): a TensorDict of batch shape ``S``."""
        assert self._obs_ids is not None and self._next_id is not None, "the buffer is empty"
        rows = torch.as_tensor(rows, dtype=torch.int64)
        shape, flat = rows.shape, rows.reshape(-1).to(self._obs_ids.device)
        obs_ids = self._obs_ids.view(-1, self.stack).index_select(0, flat)
        out: dict[str, torch.Tensor] = {}
        for key in self.frame_keys:
            c, h, w = self._frame_shape[key][0], *self._frame_shape[key][1:]
            out[key] = self._frames_at(key, obs_ids).reshape(*shape, self.stack * c, h, w)
            if sample_next_obs:
                next_ids = torch.cat((obs_ids[:, 1:], self._next_id.view(-1).index_select(0, flat)[:, None]), dim=1)
                out[f"next_{key}"] = self._frames_at(key, next_ids).reshape(*shape, self.stack * c, h, w)
        for key, src in self._rows.items():
            value = src.view(self.buffer_size * self.n_envs, *src.shape[2:]).index_select(0, flat.to(src.device))
            out[key] = value.view(*shape, *src.shape[2:])
        return TensorDict(out, batch_size=shape, device=self.device)

    def sample(
        self,
        batch_size: int,
        sample_next_obs: bool = False,
        n_samples: int = 1,
        generator: torch.Generator | None = None,
    ) -> TensorDict:
        """Uniformly sample stored transitions; a TensorDict of shape ``(n_samples, batch_size)``.

        Unlike ``ReplayBuffer`` the newest step can be sampled too: its next observation is already stored.
        """
        if batch_size <= 0 or n_samples <= 0:
            raise ValueError(f"batch_size and n_samples must be positive, got {batch_size} and {n_samples}")
        rows = self.sample_indices(batch_size * n_samples, generator).view(n_samples, batch_size)
        return self.get(rows, sample_next_obs)

    # ------------------------------------------------------------------ checkpoints
    def state_dict(self) -> dict[str, Any]:
        """Everything needed to continue exactly (plain tensors and numbers, ``weights_only``-loadable)."""
        return {
            "buffer_size": self.buffer_size,
            "n_envs": self.n_envs,
            "stack": self.stack,
            "frame_capacity": self.frame_capacity,
            "pos": self.pos,
            "len": self._len,
            "frames_written": self.frames_written,
            "frames": dict(self._frames),
            "frame_shape": {k: list(v) for k, v in self._frame_shape.items()},
            "frame_dtype": {k: str(v).removeprefix("torch.") for k, v in self._frame_dtype.items()},
            "rows": dict(self._rows),
            "obs_ids": self._obs_ids,
            "next_id": self._next_id,
            "row_min": self._row_min,
            "cur": self._cur,
            "cur_ok": self._cur_ok,
        }

    def load_state_dict(self, state: Mapping[str, Any]) -> None:
        """Restore from :meth:`state_dict` (same sizes); memory-mapped storage is filled in place."""
        mine = (self.buffer_size, self.n_envs, self.stack, self.frame_capacity)
        theirs = (state["buffer_size"], state["n_envs"], state["stack"], state["frame_capacity"])
        if mine != theirs:
            raise ValueError(
                f"state is for (buffer_size, n_envs, stack, frame_capacity)={theirs}, this buffer has {mine}"
            )
        if state["obs_ids"] is not None:
            if not self._frames:
                for key in self.frame_keys:
                    self._frame_shape[key] = torch.Size(state["frame_shape"][key])
                    self._frame_dtype[key] = getattr(torch, state["frame_dtype"][key])
                    frames = state["frames"][key]
                    self._frames[key] = self._empty(f"frames_{key}", tuple(frames.shape), frames.dtype)
                for key, value in state["rows"].items():
                    self._rows[key] = self._empty(f"row_{key}", tuple(value.shape), value.dtype)
                self._obs_ids = self._empty("obs_ids", tuple(state["obs_ids"].shape), torch.int64)
                self._next_id = self._empty("next_id", tuple(state["next_id"].shape), torch.int64)
            for key, value in state["frames"].items():
                self._frames[key].copy_(value)
            for key, value in state["rows"].items():
                self._rows[key].copy_(value)
            assert self._obs_ids is not None and self._next_id is not None
            self._obs_ids.copy_(state["obs_ids"])
            self._next_id.copy_(state["next_id"])
        self._row_min.copy_(state["row_min"])
        self._cur.copy_(state["cur"])
        self._cur_ok.copy_(state["cur_ok"])
        self.pos, self._len, self.frames_written = int(state["pos"]), int(state["len"]), int(state["frames_written"])
