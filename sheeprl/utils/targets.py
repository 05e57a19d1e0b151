"""Target networks: a frozen copy made after DDP set-up (checked identical on every rank) and its update."""

from __future__ import annotations

import copy
from typing import Any

import torch
import torch.distributed as dist
from torch import nn
from torch.nn.utils import parameters_to_vector


def unwrap(module: nn.Module) -> nn.Module:
    """The user's module inside a Fabric / DDP wrapper (itself when unwrapped)."""
    while hasattr(module, "module") and isinstance(module.module, nn.Module):
        module = module.module
    return module


def fingerprint(module: nn.Module) -> torch.Tensor:
    """Two float64 numbers that differ (in practice) whenever two modules' parameters differ."""
    v = parameters_to_vector([p.detach().double().flatten() for p in module.parameters()]).cpu()
    return torch.stack([v.sum(), (v * torch.linspace(1.0, 2.0, v.numel(), dtype=torch.float64)).sum()])


def make_target(fabric: Any, online: nn.Module, group: Any = None) -> nn.Module:
    """A frozen deep copy of ``online`` (already through ``fabric.setup_module`` or DDP).

    DDP broadcasts the first rank's weights when it wraps a module, so a copy taken before that would differ
    between ranks (each rank initialized its network from its own seed) and stay different for the whole run.
    This copies afterwards and checks it: collective over ``group`` (default: every rank), whose members all
    call it at the same point.
    """
    target = copy.deepcopy(unwrap(online)).requires_grad_(False)
    if group is None and fabric.world_size > 1:
        prints = fabric.all_gather(fingerprint(target).to(fabric.device)).view(fabric.world_size, -1).cpu()
    elif group is not None and dist.get_world_size(group) > 1:
        mine = fingerprint(target).to(fabric.device)
        parts = [torch.empty_like(mine) for _ in range(dist.get_world_size(group))]
        dist.all_gather(parts, mine, group=group)
        prints = torch.stack(parts).cpu()
    else:
        return target
    if not torch.equal(prints, prints[:1].expand_as(prints)):
        raise RuntimeError("the target network differs between ranks: copy it after the DDP set-up")
    return target


@torch.no_grad()
def update_target(online: nn.Module, target: nn.Module, tau: float) -> None:
    """Hard copy when ``tau`` is 1, else Polyak: target <- (1 - tau) * target + tau * online (buffers copied)."""
    for p, tp in zip(unwrap(online).parameters(), target.parameters(), strict=True):
        if tau >= 1.0:
            tp.copy_(p)
        else:
            tp.lerp_(p, tau)
    for b, tb in zip(unwrap(online).buffers(), target.buffers(), strict=True):
        tb.copy_(b)
