"""SAC's networks: a tanh-squashed Gaussian actor and an ensemble of Q-functions evaluated in one batched matmul.

Observations are the concatenation of ``algo.mlp_keys.encoder`` (the buffer stores that flat vector). Actions are
in the env's units: the actor maps tanh's (-1, 1) onto ``[low, high]`` and the critics take env actions as input.
"""

from __future__ import annotations

import inspect
import math
from collections.abc import Iterable, Sequence
from typing import Any

import gymnasium as gym
import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor, nn

from sheeprl.models import MLP, get_activation
from sheeprl.utils.distributions import tanh_normal_rsample


def flat_obs(obs: dict[str, Tensor], keys: Sequence[str]) -> Tensor:
    """Concatenate the vector observations ``keys`` along the last dim as float32."""
    x = torch.cat([obs[k].flatten(1) for k in keys], dim=-1) if len(keys) > 1 else obs[keys[0]].flatten(1)
    return x if x.dtype == torch.float32 else x.float()


def inplace_activation(name: str) -> nn.Module:
    """The activation module for ``name``, computing in place when the class can (ReLU, ELU, SiLU, ...)."""
    cls = get_activation(name)
    return cls(inplace=True) if "inplace" in inspect.signature(cls.__init__).parameters else cls()


def obs_dim(obs_space: gym.spaces.Dict, keys: Sequence[str]) -> int:
    return sum(int(np.prod(obs_space[k].shape)) for k in keys)


class SACActor(nn.Module):
    """pi(a|s) = low + (tanh(u) + 1) / 2 * (high - low), u ~ N(mu(s), sigma(s)) (Haarnoja et al., 2018, App. C)."""

    def __init__(
        self,
        keys: Sequence[str],
        input_dim: int,
        action_space: gym.spaces.Box,
        hidden: Sequence[int],
        activation: str = "relu",
        log_std_min: float = -5.0,
        log_std_max: float = 2.0,
    ) -> None:
        super().__init__()
        self.keys = list(keys)
        action_dim = int(np.prod(action_space.shape))
        self.trunk = MLP(input_dim, None, hidden, activation)
        for layer in self.trunk:  # each activation follows a Linear, which keeps no output for backward
            if hasattr(layer, "inplace"):
                layer.inplace = True
        self.mean = nn.Linear(self.trunk.output_dim, action_dim)
        self.log_std = nn.Linear(self.trunk.output_dim, action_dim)
        self.log_std_min, self.log_std_max = float(log_std_min), float(log_std_max)
        low = torch.as_tensor(action_space.low, dtype=torch.float32).flatten()
        high = torch.as_tensor(action_space.high, dtype=torch.float32).flatten()
        self.register_buffer("scale", (high - low) / 2.0)
        self.register_buffer("bias", (high + low) / 2.0)
        # The change of variables a = scale * tanh(u) + bias adds -sum(log scale) to log pi.
        self.register_buffer("log_scale_sum", torch.log(self.scale).sum())

    def _mean_log_std(self, obs: Tensor) -> tuple[Tensor, Tensor]:
        h = self.trunk(obs)
        # Squash log_std smoothly into [min, max] rather than clamping it, so its gradient never vanishes.
        log_std = torch.tanh(self.log_std(h))
        log_std = self.log_std_min + 0.5 * (self.log_std_max - self.log_std_min) * (log_std + 1.0)
        return self.mean(h), log_std

    def forward(self, obs: Tensor) -> tuple[Tensor, Tensor]:
        """Reparameterized actions in env units and their log-probabilities, for flat observations ``(B, D)``."""
        mean, log_std = self._mean_log_std(obs)
        squashed, log_prob = tanh_normal_rsample(mean, log_std)
        return squashed * self.scale + self.bias, log_prob - self.log_scale_sum

    @torch.no_grad()
    def stochastic(self, obs: dict[str, Tensor]) -> Tensor:
        """A sampled action for a dict of observations (rollouts, evaluation with --stochastic)."""
        return self(flat_obs(obs, self.keys))[0]

    @torch.no_grad()
    def greedy(self, obs: dict[str, Tensor]) -> Tensor:
        """The deterministic policy tanh(mu(s)) in env units (evaluation)."""
        mean, _ = self._mean_log_std(flat_obs(obs, self.keys))
        return torch.tanh(mean) * self.scale + self.bias


class QEnsemble(nn.Module):
    """``num_critics`` independent MLPs Q_i(s, a), stored as stacked weights and evaluated with batched matmuls.

    One ``baddbmm`` per layer for the whole ensemble instead of one Linear per critic: fewer kernel launches and
    less Python per gradient step, the same mathematics. Each hidden layer is Linear -> [Dropout] -> [LayerNorm]
    -> activation (DroQ's ordering); each member has its own weights, biases and layer-norm affine parameters.
    The activations run in place, on a tensor still in cache; ``tests/test_offpolicy_losses.py`` checks values and
    gradients against member-by-member ``nn`` ops for every activation. This is also the ensemble layer that
    DroQ/REDQ-style critics use (``num_critics`` > 2).
    """

    def __init__(
        self,
        input_dim: int,
        num_critics: int,
        hidden: Sequence[int],
        activation: str = "relu",
        dropout: float = 0.0,
        layer_norm: bool = False,
    ) -> None:
        super().__init__()
        self.num_critics = int(num_critics)
        self.dropout = float(dropout)
        self.layer_norm = bool(layer_norm)
        self.act = inplace_activation(activation)
        sizes = [input_dim, *hidden, 1]
        self.weights = nn.ParameterList()
        self.biases = nn.ParameterList()
        self.ln_weights = nn.ParameterList()
        self.ln_biases = nn.ParameterList()
        for i, (fan_in, fan_out) in enumerate(zip(sizes[:-1], sizes[1:], strict=True)):
            # nn.Linear's default initialization, member by member: U(-1/sqrt(fan_in), 1/sqrt(fan_in)).
            bound = 1.0 / math.sqrt(fan_in)
            self.weights.append(nn.Parameter(torch.empty(num_critics, fan_in, fan_out).uniform_(-bound, bound)))
            self.biases.append(nn.Parameter(torch.empty(num_critics, 1, fan_out).uniform_(-bound, bound)))
            if layer_norm and i < len(sizes) - 2:
                self.ln_weights.append(nn.Parameter(torch.ones(num_critics, 1, fan_out)))
                self.ln_biases.append(nn.Parameter(torch.zeros(num_critics, 1, fan_out)))

    def forward(self, obs: Tensor, actions: Tensor, detach_params: bool = False) -> Tensor:
        """Q-values ``(num_critics, B)``. With ``detach_params`` gradients reach the inputs only (the actor's loss)."""
        x = torch.cat([obs, actions], dim=-1)
        # A stride-0 view (E, B, D): every layer, the first included, is one baddbmm (bias + matmul in one kernel).
        x = x.expand(self.num_critics, *x.shape)
        last = len(self.weights) - 1
        for i, (w, b) in enumerate(zip(self.weights, self.biases, strict=True)):
            if detach_params:
                w, b = w.detach(), b.detach()
            if i == last and w.shape[-1] == 1:
                # The Q head (H -> 1) as a multiply and a sum over H: as a batched matrix-vector product, MKL takes a
                # slow path for the (E, H, 1) operand and for its backward (an outer product and a skinny matmul):
                # 4-20x slower per call; a one-thread SAC update went from 12.2 ms to 9.8 ms (benchmarks/sac.py --parts).
                return (x * w.transpose(1, 2)).sum(-1) + b.squeeze(-1)
            x = torch.baddbmm(b, x, w)
            if i == last:
                break
            if self.dropout > 0:
                x = F.dropout(x, self.dropout, self.training)
            if self.layer_norm:
                g, beta = self.ln_weights[i], self.ln_biases[i]
                if detach_params:
                    g, beta = g.detach(), beta.detach()
                x = torch.addcmul(beta, F.layer_norm(x, x.shape[-1:]), g)
            # In place: none of the ops above keeps its output for the backward pass, so the activation can
            # overwrite it (one (E, B, H) tensor less to allocate and write per layer).
            x = self.act(x)
        return x.squeeze(-1)


@torch.no_grad()
def polyak_update(params: Iterable[Tensor], target_params: Iterable[Tensor], tau: float) -> None:
    """target <- (1 - tau) * target + tau * online, in place (Lillicrap et al., 2016), in one foreach kernel."""
    online, target = list(params), list(target_params)
    if len(online) != len(target):
        raise ValueError(f"polyak_update: {len(online)} online parameters against {len(target)} target ones")
    torch._foreach_lerp_(target, online, tau)


def build_agent(
    obs_space: gym.spaces.Dict, action_space: gym.spaces.Box, cfg: Any, state: dict[str, Any] | None = None
) -> tuple[SACActor, QEnsemble]:
    """The actor and the critic ensemble from ``cfg.algo`` (and a checkpoint's ``state`` when given)."""
    a = cfg.algo
    keys = list(a.mlp_keys.encoder)
    dim = obs_dim(obs_space, keys)
    hidden = [a.dense_units] * a.mlp_layers
    actor = SACActor(keys, dim, action_space, hidden, a.activation, a.log_std_min, a.log_std_max)
    critic = QEnsemble(
        dim + int(np.prod(action_space.shape)),
        a.num_critics,
        hidden,
        a.activation,
        a.critic_dropout,
        a.critic_layer_norm,
    )
    if state is not None:
        actor.load_state_dict(state["actor"])
        critic.load_state_dict(state["critic"])
    return actor, critic
