"""Greedy (or stochastic) evaluation episodes on a fresh env, shared by every algorithm."""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import Any, Optional

import numpy as np
import torch

from sheeprl.utils.tensors import obs_to_torch


def summarize(values: list[float]) -> dict[str, float]:
    """Mean, std, median, interquartile mean, min and max of a list of numbers."""
    a = np.sort(np.asarray(values, dtype=np.float64))
    n = len(a)
    if n == 0:
        return {}
    lo, hi = int(math.floor(0.25 * n)), int(math.ceil(0.75 * n))
    iqm = float(a[lo:hi].mean()) if hi > lo else float(a.mean())
    return {
        "mean": float(a.mean()),
        "std": float(a.std()),
        "median": float(np.median(a)),
        "iqm": iqm,
        "min": float(a[0]),
        "max": float(a[-1]),
    }


@torch.no_grad()
def run_episodes(
    cfg: Any,
    act: Callable[[dict[str, torch.Tensor]], torch.Tensor],
    episodes: int,
    seed: int,
    device: torch.device | str = "cpu",
    env_state: Optional[dict[str, Any]] = None,
    run_dir: Optional[str] = None,
    capture_video: bool = False,
) -> dict[str, list[float]]:
    """Play ``episodes`` episodes with ``act(obs) -> actions`` on one fresh env.

    A stateful policy (e.g. recurrent) may have a ``reset(mask=None)`` method: it is called once before the
    first step and with the boolean mask of the envs whose episode ended after every step that ended one, so
    the next episode starts from a fresh state (the env autoresets in the same step).

    ``env_state`` carries the training run's normalization statistics (frozen here). Returns the
    raw (unnormalized) returns and lengths.
    """
    from sheeprl.envs import make_vector_env, set_env_state

    envs = make_vector_env(cfg, seed=seed, num_envs=1, run_dir=run_dir, capture_video=capture_video, training=False)
    if env_state:
        set_env_state(envs, env_state)
    returns: list[float] = []
    lengths: list[float] = []
    try:
        reset = getattr(act, "reset", None)
        if reset is not None:
            reset()
        obs, _ = envs.reset(seed=seed)
        while len(returns) < episodes:
            actions = act(obs_to_torch(obs, device))
            obs, _, terminated, truncated, infos = envs.step(actions.cpu().numpy())
            if reset is not None and (terminated | truncated).any():
                reset(torch.from_numpy(terminated | truncated))
            if "episode" in infos:
                for i in np.flatnonzero(infos["_episode"]):
                    returns.append(float(infos["episode"]["r"][i]))
                    lengths.append(float(infos["episode"]["l"][i]))
    finally:
        envs.close()
    return {"returns": returns[:episodes], "lengths": lengths[:episodes]}
