"""What DQN alone needs outside its loop: the greedy policy that evaluation and videos use."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import gymnasium as gym
import torch

from sheeprl.algos.dqn.agent import build_agent
from sheeprl.registry import register_evaluation


@register_evaluation(["dqn"])
def load_policy(
    cfg: Any,
    state: dict[str, Any],
    observation_space: gym.spaces.Dict,
    action_space: gym.Space,
    device: torch.device | str = "cpu",
    stochastic: bool = False,
) -> Callable[[dict[str, torch.Tensor]], torch.Tensor]:
    """Rebuild the Q-network of a checkpoint; returns ``act(obs) -> argmax_a Q(s, a)``.

    With ``stochastic`` the policy is epsilon-greedy at the run's final epsilon (DQN has no other stochastic policy).
    """
    q = build_agent(observation_space, action_space, cfg, state).to(device).eval()
    if not stochastic:
        return q.greedy
    eps, n = float(cfg.algo.eps_end), int(action_space.n)

    def act(obs: dict[str, torch.Tensor]) -> torch.Tensor:
        greedy = q.greedy(obs)
        explore = torch.rand(greedy.shape, device=greedy.device) < eps
        return torch.where(explore, torch.randint_like(greedy, n), greedy)

    return act
