"""Small conversions between the envs' numpy world and torch."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import numpy as np
import torch


def obs_to_torch(obs: Mapping[str, np.ndarray], device: torch.device | str = "cpu") -> dict[str, torch.Tensor]:
    """Dict of numpy arrays -> dict of tensors, zero-copy on the CPU; floats become float32, images stay uint8."""
    out: dict[str, torch.Tensor] = {}
    for k, v in obs.items():
        t = torch.from_numpy(np.ascontiguousarray(v))
        if t.is_floating_point() and t.dtype != torch.float32:
            t = t.float()
        out[k] = t.to(device, non_blocking=True) if str(device) != "cpu" else t
    return out


def final_obs_batch(infos: Mapping[str, Any], mask: np.ndarray, keys: Any) -> dict[str, np.ndarray]:
    """Stack the real final observations of the envs in ``mask`` (Gymnasium's SAME_STEP ``final_obs``)."""
    idx = np.flatnonzero(mask)
    return {k: np.stack([infos["final_obs"][i][k] for i in idx]) for k in keys}
