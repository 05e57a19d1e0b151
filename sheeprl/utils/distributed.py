"""Collectives that work on every backend: host-side values travel on a group that takes CPU tensors.

NCCL takes only accelerator tensors, so an all-reduce of a CPU flag or an ``all_gather_object`` on an
NCCL-only default group fails (``No backend type associated with device type cpu``). The CLI starts
GPU runs with the ``cpu:gloo,cuda:nccl`` backend (CPU tensors go through gloo, GPU tensors through
NCCL); for a default group that still cannot take CPU tensors (e.g. created by someone else with
``nccl`` alone), :func:`host_group` creates one gloo group over every rank, once, and every host-side
collective of sheeprl (stop flags, metrics, per-rank checkpoint state, the run folder, evaluation
results, decoupled batches) uses it. Device tensors (DDP gradients, weight transfers) stay on the
accelerator's own backend.
"""

from __future__ import annotations

from datetime import timedelta
from typing import Any, Optional

import torch
import torch.distributed as dist

# What the CLI asks Lightning for on accelerators: objects and CPU tensors through gloo, GPU tensors through NCCL.
ACCELERATOR_BACKEND = "cpu:gloo,cuda:nccl"

# (default group it was made for, host group): a new default group (a new run in the same process) gets a new one.
_HOST: tuple[Any, Any] = (None, None)


def is_distributed() -> bool:
    return dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1


def process_group_backend(accelerator: str) -> Optional[str]:
    """The backend the CLI gives Lightning for ``accelerator`` (None: Lightning's default, gloo on CPU)."""
    uses_cuda = accelerator in ("cuda", "gpu") or (accelerator == "auto" and torch.cuda.is_available())
    return ACCELERATOR_BACKEND if uses_cuda else None


def takes_cpu(group: Any = None) -> bool:
    """Whether ``group`` (default: the default group) has a backend for CPU tensors."""
    return "cpu:" in dist.get_backend_config(group)


def cpu_capable_backend() -> Optional[str]:
    """A backend string for new groups that take CPU and accelerator tensors alike (None: the default's own)."""
    if takes_cpu():
        return None
    return "cpu:gloo," + dist.get_backend_config()


def host_group(timeout_s: Optional[float] = None) -> Any:
    """The group for host-side collectives: the default group when it takes CPU tensors, else a gloo group.

    Collective the first time (creating a group is): every rank must make its first call at the same point;
    :class:`~sheeprl.utils.run.Run` does so in its constructor.
    """
    global _HOST
    default = dist.distributed_c10d._get_default_group()
    if _HOST[0] is not default:
        group = None
        if not takes_cpu():
            kwargs = {"timeout": timedelta(seconds=timeout_s)} if timeout_s else {}
            group = dist.new_group(backend="gloo", **kwargs)
        _HOST = (default, group)
    return _HOST[1]


def all_reduce_cpu(tensor: torch.Tensor, op: Any = None) -> torch.Tensor:
    """In-place all-reduce of a CPU tensor over every rank (a no-op in a single process)."""
    if is_distributed():
        dist.all_reduce(tensor, op=dist.ReduceOp.SUM if op is None else op, group=host_group())
    return tensor


def all_gather_object(obj: Any) -> list[Any]:
    """``obj`` of every rank, in rank order (``[obj]`` in a single process)."""
    if not is_distributed():
        return [obj]
    out: list[Any] = [None] * dist.get_world_size()
    dist.all_gather_object(out, obj, group=host_group())
    return out


def broadcast_object(obj: Any, src: int = 0) -> Any:
    """Rank ``src``'s ``obj`` on every rank."""
    if not is_distributed():
        return obj
    box = [obj]
    dist.broadcast_object_list(box, src=src, group=host_group())
    return box[0]
