"""Rainbow's network: the DQN encoder, then a head that is (each switchable) noisy, dueling and distributional.

Distributional (C51, Bellemare et al., 2017): the head gives, for every action, a categorical distribution over
``num_atoms`` returns evenly spaced on ``[v_min, v_max]``; Q(s, a) is its mean. Noisy (Fortunato et al., 2018):
every fully connected layer of the head is a :class:`~sheeprl.models.qheads.NoisyLinear`, which replaces
epsilon-greedy exploration. Dueling (Wang et al., 2016): value and advantage streams, aggregated per atom.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import gymnasium as gym
import torch
import torch.nn.functional as F
from torch import Tensor, nn

from sheeprl.algos.dqn.agent import build_encoder
from sheeprl.models import MultiEncoder, get_activation
from sheeprl.models.qheads import NoisyLinear, dueling, reset_noise


def head(
    in_dim: int, out_dim: int, hidden: Sequence[int], activation: str, noisy: bool, sigma0: float
) -> nn.Sequential:
    """Fully connected layers, noisy or plain, with ``activation`` between them."""
    layers: list[nn.Module] = []
    act = get_activation(activation)
    sizes = [in_dim, *hidden, out_dim]
    for i, (fan_in, fan_out) in enumerate(zip(sizes[:-1], sizes[1:], strict=True)):
        layers.append(NoisyLinear(fan_in, fan_out, sigma0) if noisy else nn.Linear(fan_in, fan_out))
        if i < len(sizes) - 2:
            layers.append(act())
    return nn.Sequential(*layers)


class RainbowNetwork(nn.Module):
    """Q(s, .) for every discrete action, from return distributions (``num_atoms`` > 1) or directly (``num_atoms`` 1)."""

    def __init__(
        self,
        encoder: MultiEncoder,
        num_actions: int,
        hidden: Sequence[int],
        activation: str = "relu",
        dueling: bool = True,
        noisy: bool = True,
        sigma0: float = 0.5,
        num_atoms: int = 51,
        v_min: float = -10.0,
        v_max: float = 10.0,
    ) -> None:
        super().__init__()
        self.encoder = encoder
        self.num_actions, self.num_atoms = int(num_actions), int(num_atoms)
        self.dueling, self.noisy = bool(dueling), bool(noisy)
        self.distributional = self.num_atoms > 1
        features = encoder.output_dim
        if self.dueling:
            self.value = head(features, self.num_atoms, hidden, activation, noisy, sigma0)
            self.advantage = head(features, num_actions * self.num_atoms, hidden, activation, noisy, sigma0)
        else:
            self.q = head(features, num_actions * self.num_atoms, hidden, activation, noisy, sigma0)
        self.register_buffer("support", torch.linspace(v_min, v_max, self.num_atoms))

    def logits(self, obs: dict[str, Tensor]) -> Tensor:
        """Per-action outputs ``(B, A, atoms)``: atom logits (distributional) or Q-values in the last dim of size 1."""
        x = self.encoder(obs)
        if self.dueling:
            value = self.value(x).view(-1, 1, self.num_atoms)
            advantage = self.advantage(x).view(-1, self.num_actions, self.num_atoms)
            return dueling(value, advantage, action_dim=-2)
        return self.q(x).view(-1, self.num_actions, self.num_atoms)

    def forward(self, obs: dict[str, Tensor]) -> tuple[Tensor, Tensor]:
        """``(q_values (B, A), log_probs (B, A, atoms) or None-like empty tensor when not distributional)``."""
        out = self.logits(obs)
        if not self.distributional:
            return out.squeeze(-1), out
        log_probs = F.log_softmax(out, dim=-1)
        return (log_probs.exp() * self.support).sum(-1), log_probs

    def reset_noise(self, generator: torch.Generator | None = None) -> None:
        if self.noisy:
            reset_noise(self, generator)

    @torch.no_grad()
    def act(self, obs: dict[str, Tensor]) -> Tensor:
        """argmax_a Q(s, a) with the current noise (exploration when noisy)."""
        return self(obs)[0].argmax(dim=-1)

    @torch.no_grad()
    def greedy(self, obs: dict[str, Tensor]) -> Tensor:
        """argmax_a Q(s, a) with the noise off (the mean weights): the evaluation policy."""
        was_training = self.training
        self.eval()
        try:
            return self(obs)[0].argmax(dim=-1)
        finally:
            self.train(was_training)


def build_agent(
    obs_space: gym.spaces.Dict, action_space: gym.spaces.Discrete, cfg: Any, state: dict[str, Any] | None = None
) -> RainbowNetwork:
    """The network of ``cfg.algo`` (with a checkpoint's weights when ``state`` is given)."""
    a = cfg.algo
    net = RainbowNetwork(
        build_encoder(obs_space, cfg),
        int(action_space.n),
        [a.dense_units] * a.mlp_layers,
        a.activation,
        dueling=a.dueling,
        noisy=a.noisy,
        sigma0=a.noisy_sigma0,
        num_atoms=a.num_atoms if a.distributional else 1,
        v_min=a.v_min,
        v_max=a.v_max,
    )
    if state is not None:
        net.load_state_dict(state["q"])
    return net
