"""Target networks, copied where every rank holds the same weights.

A target network must start from the online network's weights *after* Fabric / DDP broadcast rank 0's weights to
every rank; a copy taken before starts each rank's target from its own random initialization, and the ranks then
bootstrap from different targets for the whole run. :func:`target_copy` takes the module that
``fabric.setup_module`` (or DDP) returned, so it cannot be called before that set-up:

    critic = fabric.setup_module(critic_raw)
    target_critic = target_copy(critic, state["target_critic"] if state else None)

:func:`make_target` does the same from any wrapped module and also checks, with one collective, that the copy
is identical on every rank; :func:`update_target` is the hard or Polyak update.
"""

from __future__ import annotations

import copy
from collections.abc import Mapping
from typing import Any

import torch
import torch.distributed as dist
from torch import nn
from torch.nn.utils import parameters_to_vector

__all__ = ["fingerprint", "make_target", "target_copy", "unwrap", "update_target"]


def target_copy(wrapped: nn.Module, state: Mapping[str, Any] | None = None) -> nn.Module:
    """A frozen deep copy of the module inside ``wrapped`` (``fabric.setup_module``'s or DDP's result), on the same
    device, loaded from ``state`` when given (a resumed run's saved target)."""
    inner = getattr(wrapped, "module", None)
    if not isinstance(inner, nn.Module):
        raise TypeError(
            "target_copy needs the module returned by fabric.setup_module (or DDP): a copy taken before the set-up "
            "would differ between ranks"
        )
    target = copy.deepcopy(inner).requires_grad_(False)
    if state is not None:
        target.load_state_dict(state)
    return target


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
