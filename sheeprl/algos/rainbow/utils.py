"""What Rainbow alone needs outside its loop: the greedy policy that evaluation and videos use."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import gymnasium as gym
import torch

from sheeprl.algos.rainbow.agent import build_agent
from sheeprl.registry import register_evaluation


@register_evaluation(["rainbow", "rainbow_decoupled"])
def load_policy(
    cfg: Any,
    state: dict[str, Any],
    observation_space: gym.spaces.Dict,
    action_space: gym.Space,
    device: torch.device | str = "cpu",
    stochastic: bool = False,
) -> Callable[[dict[str, torch.Tensor]], torch.Tensor]:
    """Rebuild the network of a checkpoint; returns ``act(obs) -> argmax_a Q(s, a)`` with the noise off, or with
    fresh noise every step when ``stochastic`` (noisy nets) / epsilon-greedy at eps_end (no noisy layers)."""
    net = build_agent(observation_space, action_space, cfg, state).to(device)
    if not stochastic:
        return net.eval().greedy
    if net.noisy:

        def noisy_act(obs: dict[str, torch.Tensor]) -> torch.Tensor:
            net.reset_noise()
            return net.act(obs)

        return noisy_act
    eps, n = float(cfg.algo.eps_end), int(action_space.n)

    def eps_act(obs: dict[str, torch.Tensor]) -> torch.Tensor:
        greedy = net.greedy(obs)
        return torch.where(torch.rand(greedy.shape, device=greedy.device) < eps, torch.randint_like(greedy, n), greedy)

    return eps_act
