"""Checkpoints that resume exactly: atomic writes, keep-last-K, per-rank RNG and env statistics.

Rank 0 writes ``<run>/checkpoint/ckpt_<policy_step>_0.ckpt`` holding the algorithm's state (models,
optimizers, schedulers, counters) plus, under ``"ranks"``, the small per-rank state of every rank
(RNG states, observation/reward normalization statistics), gathered with one collective. On
resume each rank takes its own entry back, so a distributed run continues every rank's streams.
"""

from __future__ import annotations

import os
import random
import re
from pathlib import Path
from typing import Any, Optional

import numpy as np
import torch

from sheeprl.utils.distributed import all_gather_object

_CKPT_RE = re.compile(r"^ckpt_(\d+)_(\d+)\.ckpt$")


def capture_rng() -> dict[str, Any]:
    state: dict[str, Any] = {
        "python": random.getstate(),
        "numpy": np.random.get_state(),
        "torch": torch.get_rng_state(),
    }
    if torch.cuda.is_available() and torch.cuda.is_initialized():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def restore_rng(state: dict[str, Any]) -> None:
    random.setstate(state["python"])
    np.random.set_state(state["numpy"])
    torch.set_rng_state(state["torch"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


_TMP_RE = re.compile(r"^\.ckpt_\d+_\d+\.ckpt\.tmp\d*$")


def _fsync_dir(folder: Path) -> None:
    """Make a rename in ``folder`` durable (a no-op where directories cannot be opened, e.g. Windows)."""
    try:
        fd = os.open(folder, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


def atomic_save(obj: Any, path: str | os.PathLike) -> None:
    """torch.save to a temporary file in the same folder, fsync, then rename: a crash (even a power cut) never
    leaves half a checkpoint under the final name."""
    path = Path(path)
    tmp = path.with_name(f".{path.name}.tmp{os.getpid()}")
    try:
        with open(tmp, "wb") as f:
            torch.save(obj, f)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
        _fsync_dir(path.parent)
    finally:
        if tmp.exists():
            tmp.unlink()


def remove_stale_temp_files(folder: str | os.PathLike) -> list[Path]:
    """Delete ``.ckpt_*.tmp*`` files a killed writer left behind (only one process writes checkpoints)."""
    folder = Path(folder)
    if not folder.is_dir():
        return []
    stale = [p for p in folder.iterdir() if _TMP_RE.match(p.name)]
    for p in stale:
        p.unlink(missing_ok=True)
    return stale


def load_checkpoint(path: str | os.PathLike, mmap: bool = False) -> dict[str, Any]:
    """Load a checkpoint on the CPU; raises FileNotFoundError or ValueError (corrupt / not a sheeprl checkpoint).

    ``mmap`` maps tensors from the file instead of reading them (a cheap look at a large checkpoint)."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"checkpoint not found: {path}")
    try:
        state = torch.load(path, map_location="cpu", weights_only=False, mmap=mmap)
    except Exception as err:  # pickle, zip and torch errors all mean the same to a user
        raise ValueError(f"cannot read checkpoint {path}: {type(err).__name__}: {err}") from None
    if not isinstance(state, dict) or "policy_step" not in state:
        raise ValueError(f"{path} is not a sheeprl checkpoint")
    return state


def space_signature(space: Any) -> str:
    """Shapes, dtypes and sizes of a Gymnasium space, without bounds (normalization changes them): two runs whose
    signatures differ cannot share weights. A plain Box observation counts as ``{"state": Box}`` (what the
    vector env factory makes of it)."""
    import gymnasium as gym

    def one(sp: Any) -> str:
        if isinstance(sp, gym.spaces.Discrete):
            return f"Discrete({int(sp.n)})"
        if isinstance(sp, gym.spaces.MultiDiscrete):
            return f"MultiDiscrete({[int(n) for n in np.asarray(sp.nvec).ravel()]})"
        if isinstance(sp, gym.spaces.Dict):
            return "Dict(" + ", ".join(f"{k}: {one(v)}" for k, v in sorted(sp.spaces.items())) + ")"
        shape = getattr(sp, "shape", None)
        return f"{type(sp).__name__}({tuple(shape) if shape is not None else ''}, {getattr(sp, 'dtype', '')})"

    return one(space)


def list_checkpoints(folder: str | os.PathLike) -> list[Path]:
    """Rank-0 checkpoints in a folder, oldest first."""
    folder = Path(folder)
    if not folder.is_dir():
        return []
    found = [(int(m.group(1)), p) for p in folder.iterdir() if (m := _CKPT_RE.match(p.name)) and m.group(2) == "0"]
    return [p for _, p in sorted(found)]


def gather_rank_state(rank_state: dict[str, Any]) -> list[dict[str, Any]]:
    """Every rank's small state, in rank order (a single-process run returns ``[rank_state]``)."""
    return all_gather_object(rank_state)  # on the CPU-capable group: NCCL alone cannot gather objects


class Checkpointer:
    """Decides when to save, writes atomically on rank 0, and keeps the newest ``keep_last`` files."""

    def __init__(self, folder: str | os.PathLike, every: int, keep_last: int, is_writer: bool) -> None:
        self.folder = Path(folder)
        self.every = every
        self.keep_last = keep_last
        self.is_writer = is_writer
        self._next = every if every > 0 else None

    def start_from(self, policy_step: int) -> None:
        """At start: drop temp files of a killed writer; after a resume, the next checkpoint is due at the first
        multiple of ``every`` past ``policy_step``."""
        if self.is_writer:
            remove_stale_temp_files(self.folder)
        if self.every > 0:
            self._next = (policy_step // self.every + 1) * self.every

    def due(self, policy_step: int) -> bool:
        return self._next is not None and policy_step >= self._next

    def save(self, policy_step: int, state: dict[str, Any], rank_state: dict[str, Any]) -> Optional[Path]:
        """Collective: every rank calls it. Returns the written path on rank 0."""
        ranks = gather_rank_state(rank_state)
        if self.every > 0:
            self._next = (policy_step // self.every + 1) * self.every
        if not self.is_writer:
            return None
        self.folder.mkdir(parents=True, exist_ok=True)
        path = self.folder / f"ckpt_{policy_step}_0.ckpt"
        atomic_save({**state, "policy_step": policy_step, "ranks": ranks}, path)
        if self.keep_last > 0:
            for old in list_checkpoints(self.folder)[: -self.keep_last]:
                old.unlink(missing_ok=True)
        remove_stale_temp_files(self.folder)
        return path
