"""What Dreamer V3 alone needs outside its loop: the stateful policy that evaluation and videos use."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import gymnasium as gym
import torch

from sheeprl.algos.dreamer_v3.agent import build_agent, greedy_policy
from sheeprl.registry import register_evaluation


@register_evaluation("dreamer_v3")
def load_policy(
    cfg: Any,
    state: dict[str, Any],
    observation_space: gym.spaces.Dict,
    action_space: gym.Space,
    device: torch.device | str = "cpu",
    stochastic: bool = False,
) -> Callable[[dict[str, torch.Tensor]], torch.Tensor]:
    """Rebuild the agent of a checkpoint; returns ``act(obs) -> env actions`` carrying the recurrent state between
    calls, with ``act.reset(mask)`` restarting it per episode (called by ``utils.evaluation.run_episodes``)."""
    agent = build_agent(observation_space, action_space, cfg, state).to(device).eval()
    return greedy_policy(agent, action_space, device, stochastic=stochastic)
