"""Target networks, copied where every rank holds the same weights.

A target network must start from the online network's weights *after* Fabric / DDP broadcast rank 0's weights to
every rank; a copy taken before starts each rank's target from its own random initialization, and the ranks then
bootstrap from different targets for the whole run. :func:`target_copy` takes the module that
``fabric.setup_module`` (or DDP) returned, so it cannot be called before that set-up:

    critic = fabric.setup_module(critic_raw)
    target_critic = target_copy(critic, state["target_critic"] if state else None)
"""

from __future__ import annotations

import copy
from collections.abc import Mapping
from typing import Any

from torch import nn

__all__ = ["target_copy"]


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
