"""What TD3 and DDPG need outside their loop: the policy that evaluation and videos use."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import gymnasium as gym
import torch

from sheeprl.algos.td3.agent import build_agent
from sheeprl.registry import register_evaluation


@register_evaluation(["td3", "ddpg"])
def load_policy(
    cfg: Any,
    state: dict[str, Any],
    observation_space: gym.spaces.Dict,
    action_space: gym.Space,
    device: torch.device | str = "cpu",
    stochastic: bool = False,
) -> Callable[[dict[str, torch.Tensor]], torch.Tensor]:
    """Rebuild the actor of a checkpoint; returns ``act(obs) -> env actions``.

    With ``stochastic`` the training-time exploration noise is added (``algo.exploration_noise``).
    """
    actor, _ = build_agent(observation_space, action_space, cfg, state)
    actor = actor.to(device).eval()
    if not stochastic:
        return actor.greedy
    low, high = -actor.scale + actor.bias, actor.scale + actor.bias

    def act(obs: dict[str, torch.Tensor]) -> torch.Tensor:
        mean = actor.greedy(obs)
        return torch.clamp(mean + torch.randn_like(mean) * cfg.algo.exploration_noise * actor.scale, low, high)

    return act
