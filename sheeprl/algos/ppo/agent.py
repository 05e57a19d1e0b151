"""PPO's actor-critic: a shared observation encoder, separate actor and critic MLPs.

With vector observations the encoder is the identity on the concatenated MLP keys, so actor and
critic are the two independent MLPs of CleanRL's ppo.py; with pixels a NatureCNN is shared.
"""

from __future__ import annotations

from typing import Any

import gymnasium as gym
import numpy as np
import torch
from torch import Tensor, nn

from sheeprl.models import MLP, CNNEncoder, MLPEncoder, MultiEncoder, layer_init
from sheeprl.models.parallel import ParallelMLPs, tracing
from sheeprl.utils.distributions import (
    categorical_entropy,
    categorical_log_prob,
    categorical_sample,
    normal_entropy,
    normal_log_prob,
    normal_sample,
    np_categorical_log_prob,
    np_categorical_sample,
    np_normal_log_prob,
    np_normal_sample,
)


class PPOAgent(nn.Module):
    """``forward(obs, actions)`` is the training path (through DDP); ``act``/``greedy`` are the rollout path."""

    def __init__(self, obs_space: gym.spaces.Dict, action_space: gym.Space, cfg: Any) -> None:
        super().__init__()
        cnn_keys, mlp_keys = list(cfg.cnn_keys.encoder), list(cfg.mlp_keys.encoder)
        cnn = None
        if cnn_keys:
            cnn = CNNEncoder(
                cnn_keys,
                [obs_space[k].shape[0] for k in cnn_keys],
                obs_space[cnn_keys[0]].shape[-1],
                cfg.cnn_features_dim,
                kind=cfg.cnn_encoder,
            )
            if cfg.ortho_init:  # CleanRL's Atari agent: orthogonal init with gain sqrt(2) in the CNN too
                for module in cnn.modules():
                    if isinstance(module, (nn.Conv2d, nn.Linear)):
                        layer_init(module)
        mlp = MLPEncoder(mlp_keys, [int(np.prod(obs_space[k].shape)) for k in mlp_keys], []) if mlp_keys else None
        self.encoder = MultiEncoder(cnn, mlp)
        hidden = [cfg.dense_units] * cfg.mlp_layers

        self.kind = type(action_space).__name__
        if isinstance(action_space, gym.spaces.Discrete):
            self.nvec = [int(action_space.n)]
        elif isinstance(action_space, gym.spaces.MultiDiscrete):
            self.nvec = [int(n) for n in action_space.nvec]
        elif isinstance(action_space, gym.spaces.Box):
            self.nvec = []
            self.action_dim = int(np.prod(action_space.shape))
            self.log_std = nn.Parameter(torch.full((1, self.action_dim), float(cfg.log_std_init)))
            self.squash = cfg.action_squash
            self.register_buffer("low", torch.as_tensor(action_space.low, dtype=torch.float32))
            self.register_buffer("high", torch.as_tensor(action_space.high, dtype=torch.float32))
        else:
            raise ValueError(f"PPO does not support {self.kind} action spaces")
        out = sum(self.nvec) if self.nvec else self.action_dim
        feat = self.encoder.output_dim
        # Small final gains: near-uniform initial policy, unit-scale values (37 implementation details, #2).
        self.actor = MLP(feat, out, hidden, cfg.activation, ortho_init=cfg.ortho_init, output_std=0.01)
        self.critic = MLP(feat, 1, hidden, cfg.activation, ortho_init=cfg.ortho_init, output_std=1.0)
        # Acting runs actor and critic as one network (a third of the per-step dispatch); training uses the modules.
        self._heads = ParallelMLPs.create([self.actor, self.critic])
        # Vector observations straight into the heads (no CNN, no encoder layers): acting can then run in numpy.
        enc = self.encoder.mlp_encoder
        self._np_keys = enc.keys if cnn is None and enc is not None and len(enc.model) == 0 else None
        self._np_splits = np.cumsum(self.nvec)[:-1].tolist()
        # Greedy actions (evaluation) need the actor alone.
        self._actor_snapshot = ParallelMLPs.create([self.actor]) if self._np_keys is not None else None
        # With no entropy bonus the entropy is only logged: computing it off the graph spares its backward.
        self.entropy_grad = True

    # ----------------------------------------------------------------------------------- distributions

    def _log_prob(self, out: Tensor, actions: Tensor) -> Tensor:
        if not self.nvec:
            return normal_log_prob(out, self.log_std.expand_as(out), actions)
        if len(self.nvec) == 1:
            return categorical_log_prob(out, actions)
        logits = torch.split(out, self.nvec, dim=-1)
        return sum(categorical_log_prob(lg, actions[..., i]) for i, lg in enumerate(logits))

    def _entropy(self, out: Tensor) -> Tensor:
        if not self.nvec:
            return normal_entropy(self.log_std.expand_as(out))
        if len(self.nvec) == 1:
            return categorical_entropy(out)
        return sum(categorical_entropy(lg) for lg in torch.split(out, self.nvec, dim=-1))

    def _sample(self, out: Tensor) -> Tensor:
        if not self.nvec:
            return normal_sample(out, self.log_std.expand_as(out))
        if len(self.nvec) == 1:
            return categorical_sample(out)
        return torch.stack([categorical_sample(lg) for lg in torch.split(out, self.nvec, dim=-1)], dim=-1)

    # ----------------------------------------------------------------------------------- paths

    def forward(self, obs: dict[str, Tensor], actions: Tensor) -> tuple[Tensor, Tensor, Tensor]:
        """Training: log-probabilities and entropies of ``actions`` and the state values."""
        feat = self.encoder(obs)
        out = self.actor(feat)
        entropy = self._entropy(out if self.entropy_grad else out.detach())
        return self._log_prob(out, actions), entropy, self.critic(feat).squeeze(-1)

    def act(self, obs: dict[str, Tensor]) -> tuple[Tensor, Tensor, Tensor]:
        """Rollout: sampled actions (pre-squash for Box), their log-probabilities and the values."""
        out = self._act_numpy(obs)
        return out if out is not None else self._act_torch(obs)

    def _act_numpy(self, obs: dict[str, Tensor]) -> tuple[Tensor, Tensor, Tensor] | None:
        """:meth:`act` in numpy on the CPU (a small policy's step is op dispatch, ~4x cheaper in numpy), else None.

        Same weights (a view of the fused snapshot), same torch noise calls, so the same actions as the torch
        path and log-probabilities and values equal up to float rounding.
        """
        heads = self._heads_numpy(obs)
        if heads is None:
            return None
        both, lead = heads
        out, values = both[:, :-1], both[:, -1]
        if not self.nvec:
            log_std = self.log_std.detach().numpy()
            actions = np_normal_sample(out, log_std)
            logp = np_normal_log_prob(out, log_std, actions)
        elif len(self.nvec) == 1:
            actions = np_categorical_sample(out)
            logp = np_categorical_log_prob(out, actions)
        else:
            logits = np.split(out, self._np_splits, axis=-1)
            actions = np.stack([np_categorical_sample(lg) for lg in logits], axis=-1)
            logp = sum(np_categorical_log_prob(lg, actions[:, i]) for i, lg in enumerate(logits))
        return (
            torch.from_numpy(actions.reshape(*lead, *actions.shape[1:])),
            torch.from_numpy(logp.reshape(lead)),
            torch.from_numpy(values.reshape(lead)),
        )

    def _heads_numpy(
        self, obs: dict[str, Tensor], snapshot: ParallelMLPs | None = None
    ) -> tuple[np.ndarray, tuple[int, ...]] | None:
        """(actor outputs and value, ``(rows, out + 1)``; the observations' leading dims) in numpy, or None.

        ``snapshot``: another snapshot over the same input (the actor alone, for greedy actions).
        """
        snapshot = self._heads if snapshot is None else snapshot
        if self._np_keys is None or snapshot is None or tracing():
            return None
        parts = [obs[k] for k in self._np_keys]
        if any(t.device.type != "cpu" or t.requires_grad for t in parts):
            return None
        arrays = [t.numpy() for t in parts]
        x = np.concatenate(arrays, axis=-1) if len(arrays) > 1 else arrays[0]
        lead = x.shape[:-1]
        x = x.reshape(-1, x.shape[-1])
        if x.dtype != np.float32:
            x = x.astype(np.float32)
        both = snapshot.numpy(x)
        return None if both is None else (both, lead)

    @torch.no_grad()
    def _act_torch(self, obs: dict[str, Tensor]) -> tuple[Tensor, Tensor, Tensor]:
        feat = self.encoder(obs)
        if self._heads is not None:
            both = self._heads(feat)
            out, values = both[..., :-1], both[..., -1]
        else:
            out, values = self.actor(feat), self.critic(feat).squeeze(-1)
        actions = self._sample(out)
        return actions, self._log_prob(out, actions), values

    def value(self, obs: dict[str, Tensor]) -> Tensor:
        """State values (rollouts: the bootstrap of the last and of truncated steps), in numpy where act() is."""
        heads = self._heads_numpy(obs)
        if heads is not None:
            both, lead = heads
            return torch.from_numpy(both[:, -1].reshape(lead))
        return self._value_torch(obs)

    @torch.no_grad()
    def _value_torch(self, obs: dict[str, Tensor]) -> Tensor:
        return self.critic(self.encoder(obs)).squeeze(-1)

    def greedy(self, obs: dict[str, Tensor]) -> Tensor:
        """The deterministic policy (mode), already mapped to the env's action space (in numpy where act() is)."""
        actor = self._heads_numpy(obs, self._actor_snapshot) if self._actor_snapshot is not None else None
        if actor is None:
            return self._greedy_torch(obs)
        out, lead = actor
        if not self.nvec:
            return self.to_env(torch.from_numpy(out.reshape(*lead, out.shape[-1])))
        if len(self.nvec) == 1:
            return torch.from_numpy(out.argmax(-1).reshape(lead))
        modes = np.stack([lg.argmax(-1) for lg in np.split(out, self._np_splits, axis=-1)], axis=-1)
        return torch.from_numpy(modes.reshape(*lead, modes.shape[-1]))

    @torch.no_grad()
    def _greedy_torch(self, obs: dict[str, Tensor]) -> Tensor:
        out = self.actor(self.encoder(obs))
        if not self.nvec:
            return self.to_env(out)
        if len(self.nvec) == 1:
            return out.argmax(-1)
        return torch.stack([lg.argmax(-1) for lg in torch.split(out, self.nvec, dim=-1)], dim=-1)

    @torch.no_grad()
    def stochastic(self, obs: dict[str, Tensor]) -> Tensor:
        """A sampled action mapped to the env's action space (evaluation with --stochastic)."""
        return self.to_env(self._sample(self.actor(self.encoder(obs))))

    def to_env(self, actions: Tensor) -> Tensor:
        """Map sampled actions to the env: clip or tanh-squash Gaussian actions into the bounds."""
        if self.nvec:
            return actions
        if self.squash == "tanh":
            return self.low + (torch.tanh(actions) + 1.0) * 0.5 * (self.high - self.low)
        return torch.maximum(torch.minimum(actions, self.high), self.low)


def build_agent(
    obs_space: gym.spaces.Dict, action_space: gym.Space, cfg: Any, state: dict[str, Any] | None = None
) -> PPOAgent:
    agent = PPOAgent(obs_space, action_space, cfg.algo)
    if state is not None:
        agent.load_state_dict(state)
    return agent
