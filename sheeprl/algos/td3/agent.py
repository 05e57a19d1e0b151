"""TD3's networks: a deterministic tanh actor in env units and SAC's batched Q ensemble as the critics."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import gymnasium as gym
import numpy as np
import torch
from torch import Tensor, nn

from sheeprl.algos.sac.agent import QEnsemble, flat_obs, obs_dim
from sheeprl.models import MLP


class TD3Actor(nn.Module):
    """mu(s) = low + (tanh(f(s)) + 1) / 2 * (high - low)."""

    def __init__(
        self, keys: Sequence[str], input_dim: int, action_space: gym.spaces.Box, hidden: Sequence[int], activation: str
    ) -> None:
        super().__init__()
        self.keys = list(keys)
        self.net = MLP(input_dim, int(np.prod(action_space.shape)), hidden, activation)
        low = torch.as_tensor(action_space.low, dtype=torch.float32).flatten()
        high = torch.as_tensor(action_space.high, dtype=torch.float32).flatten()
        self.register_buffer("scale", (high - low) / 2.0)
        self.register_buffer("bias", (high + low) / 2.0)

    def forward(self, obs: Tensor) -> Tensor:
        """Actions in env units for flat observations ``(B, D)``."""
        return torch.tanh(self.net(obs)) * self.scale + self.bias

    @torch.no_grad()
    def greedy(self, obs: dict[str, Tensor]) -> Tensor:
        """The deterministic policy for a dict of observations (evaluation)."""
        return self(flat_obs(obs, self.keys))


def build_agent(
    obs_space: gym.spaces.Dict, action_space: gym.spaces.Box, cfg: Any, state: dict[str, Any] | None = None
) -> tuple[TD3Actor, QEnsemble]:
    """The actor and the critics from ``cfg.algo`` (and a checkpoint's ``state`` when given)."""
    a = cfg.algo
    keys = list(a.mlp_keys.encoder)
    dim = obs_dim(obs_space, keys)
    hidden = [a.dense_units] * a.mlp_layers
    actor = TD3Actor(keys, dim, action_space, hidden, a.activation)
    critic = QEnsemble(dim + int(np.prod(action_space.shape)), a.num_critics, hidden, a.activation)
    if state is not None:
        actor.load_state_dict(state["actor"])
        critic.load_state_dict(state["critic"])
    return actor, critic
