"""What SAC alone needs outside its loop: the policy that evaluation and videos use."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import gymnasium as gym
import torch

from sheeprl.algos.sac.agent import build_agent
from sheeprl.registry import register_evaluation


@register_evaluation(["sac", "sac_decoupled", "droq"])
def load_policy(
    cfg: Any,
    state: dict[str, Any],
    observation_space: gym.spaces.Dict,
    action_space: gym.Space,
    device: torch.device | str = "cpu",
    stochastic: bool = False,
) -> Callable[[dict[str, torch.Tensor]], torch.Tensor]:
    """Rebuild the actor of a checkpoint; returns ``act(obs) -> env actions`` (tanh(mean) unless ``stochastic``)."""
    actor, _ = build_agent(observation_space, action_space, cfg, state)
    actor = actor.to(device).eval()
    return actor.stochastic if stochastic else actor.greedy
