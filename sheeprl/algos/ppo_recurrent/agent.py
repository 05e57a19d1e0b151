"""Recurrent PPO's actor-critic: encoder -> recurrent core (LSTM or GRU) -> actor and critic MLPs.

The recurrent state of every env is one tensor ``(N, state_size)`` (an LSTM's ``h`` and ``c`` concatenated).
Each step first zeroes the state of the envs whose episode starts there (``is_first``), then advances the
core; acting, training on sequences and evaluation all go through :meth:`RecurrentPPOAgent.core`, so the
training path recomputes exactly what the rollout saw.
"""

from __future__ import annotations

from typing import Any, Optional

import gymnasium as gym
import torch
from torch import Tensor, nn

from sheeprl.algos.ppo.agent import PPOAgent
from sheeprl.models import MLP, LayerNormGRUCell

RNN_TYPES = ("lstm", "gru", "ln_gru")


class RecurrentPPOAgent(PPOAgent):
    """PPO's agent (encoder, action distributions, action mapping) with a recurrent core before the heads."""

    def __init__(self, obs_space: gym.spaces.Dict, action_space: gym.Space, cfg: Any) -> None:
        super().__init__(obs_space, action_space, cfg)
        feat, hidden_size = self.encoder.output_dim, int(cfg.rnn_hidden_size)
        self.rnn_type = cfg.rnn_type
        self.cell = self._make_cell(feat, hidden_size, cfg.ortho_init)
        # sb3-contrib's default: the critic has its own core, so value gradients do not reshape the policy's memory.
        self.critic_cell = self._make_cell(feat, hidden_size, cfg.ortho_init) if cfg.critic_rnn else None
        self.hidden_size = hidden_size
        self.cell_state_size = 2 * hidden_size if self.rnn_type == "lstm" else hidden_size
        self.state_size = self.cell_state_size * (2 if cfg.critic_rnn else 1)
        # The heads read the core's output instead of the encoder's features.
        hidden = [cfg.dense_units] * cfg.mlp_layers
        out = sum(self.nvec) if self.nvec else self.action_dim
        self.actor = MLP(hidden_size, out, hidden, cfg.activation, ortho_init=cfg.ortho_init, output_std=0.01)
        self.critic = MLP(hidden_size, 1, hidden, cfg.activation, ortho_init=cfg.ortho_init, output_std=1.0)

    # ----------------------------------------------------------------------------------- recurrent core

    def _make_cell(self, feat: int, hidden_size: int, ortho_init: bool) -> nn.Module:
        if self.rnn_type == "lstm":
            cell: nn.Module = nn.LSTMCell(feat, hidden_size)
        elif self.rnn_type == "gru":
            cell = nn.GRUCell(feat, hidden_size)
        elif self.rnn_type == "ln_gru":
            cell = LayerNormGRUCell(feat, hidden_size)
        else:
            raise ValueError(f"unknown rnn_type {self.rnn_type!r}; choose one of {RNN_TYPES}")
        if ortho_init and self.rnn_type != "ln_gru":
            for name, param in cell.named_parameters():  # CleanRL's ppo_atari_lstm initialization
                if "bias" in name:
                    nn.init.zeros_(param)
                else:
                    nn.init.orthogonal_(param, 1.0)
        return cell

    def _step(self, cell: nn.Module, feat: Tensor, state: Tensor) -> tuple[Tensor, Tensor]:
        if self.rnn_type == "lstm":
            h, c = cell(feat, tuple(state.chunk(2, dim=-1)))
            return h, torch.cat((h, c), dim=-1)
        h = cell(feat, state)
        return h, h

    def initial_state(self, n: int, device: torch.device | str = "cpu") -> Tensor:
        return torch.zeros(n, self.state_size, device=device)

    def core(self, feat: Tensor, state: Tensor, is_first: Tensor) -> tuple[Tensor, Tensor, Tensor]:
        """One step for a batch: reset the state where an episode starts, then advance.

        Returns the actor's and the critic's inputs (the same tensor with a shared core) and the next state.
        """
        state = state * (~is_first.bool()).unsqueeze(-1).to(state.dtype)
        if self.critic_cell is None:
            h, state = self._step(self.cell, feat, state)
            return h, h, state
        actor_state, critic_state = state.split(self.cell_state_size, dim=-1)
        h_actor, actor_state = self._step(self.cell, feat, actor_state)
        h_critic, critic_state = self._step(self.critic_cell, feat, critic_state)
        return h_actor, h_critic, torch.cat((actor_state, critic_state), dim=-1)

    def core_sequence(self, feat: Tensor, state: Tensor, is_first: Tensor) -> tuple[Tensor, Tensor]:
        """Actor and critic inputs ``(L, B, hidden)`` over ``feat (L, B, F)`` from ``state (B, S)`` (truncated BPTT)."""
        if self.rnn_type == "lstm":
            return self._lstm_sequence(feat, state, is_first)
        actor, critic = [], []
        for t in range(feat.shape[0]):
            h_actor, h_critic, state = self.core(feat[t], state, is_first[t])
            actor.append(h_actor)
            critic.append(h_critic)
        return torch.stack(actor), torch.stack(critic)

    def _fused_lstm_weights(self) -> tuple[Tensor, Tensor, Tensor]:
        """The actor's and the critic's LSTMs as one LSTM of twice the width: input weights and biases stacked gate
        by gate (i, f, g, o; actor rows then critic rows), recurrent weights block-diagonal, so that the two cores
        stay independent (the zero blocks get no gradient: they are constants, not parameters)."""
        actor, critic = self.cell, self.critic_cell
        if critic is None:
            return actor.weight_ih, actor.weight_hh, actor.bias_ih + actor.bias_hh
        H = self.hidden_size
        zeros = actor.weight_hh.new_zeros(H, H)
        w_ih, w_hh, bias = [], [], []
        for k in range(4):
            rows = slice(k * H, (k + 1) * H)
            w_ih += [actor.weight_ih[rows], critic.weight_ih[rows]]
            w_hh += [torch.cat((actor.weight_hh[rows], zeros), 1), torch.cat((zeros, critic.weight_hh[rows]), 1)]
            bias += [actor.bias_ih[rows] + actor.bias_hh[rows], critic.bias_ih[rows] + critic.bias_hh[rows]]
        return torch.cat(w_ih), torch.cat(w_hh), torch.cat(bias)

    def _lstm_sequence(self, feat: Tensor, state: Tensor, is_first: Tensor) -> tuple[Tensor, Tensor]:
        """``core_sequence`` for LSTM cores, the same arithmetic as ``nn.LSTMCell`` step by step but with the input
        projection of every step in one matmul and both cores in one cell: the training unroll's cost is its number
        of small ops (8 sequences x 64 units), not its FLOPs, and this halves them."""
        L, B, F = feat.shape
        H = self.hidden_size
        w_ih, w_hh, bias = self._fused_lstm_weights()
        x_gates = torch.addmm(bias, feat.reshape(L * B, F), w_ih.t()).view(L, B, -1)
        if self.critic_cell is None:
            h, c = state.split(H, dim=-1)
        else:  # state = [h_actor, c_actor, h_critic, c_critic]
            h_a, c_a, h_c, c_c = state.split(H, dim=-1)
            h, c = torch.cat((h_a, h_c), -1), torch.cat((c_a, c_c), -1)
        keep = (~is_first.bool()).unsqueeze(-1).to(feat.dtype)
        w_hh_t = w_hh.t()
        outs = []
        for t in range(L):
            h, c = h * keep[t], c * keep[t]
            gates = torch.addmm(x_gates[t], h, w_hh_t)
            sig = gates.sigmoid()  # i, f, (g), o; g is the tanh one
            i, f, _, o = sig.chunk(4, dim=-1)
            g = gates[:, 2 * h.shape[-1] : 3 * h.shape[-1]].tanh()
            c = f * c + i * g
            h = o * c.tanh()
            outs.append(h)
        hs = torch.stack(outs)
        if self.critic_cell is None:
            return hs, hs
        return hs[..., :H], hs[..., H:]

    # ----------------------------------------------------------------------------------- paths

    def forward(  # type: ignore[override]
        self, obs: dict[str, Tensor], actions: Tensor, state: Tensor, is_first: Tensor
    ) -> tuple[Tensor, Tensor, Tensor]:
        """Training on ``(L, B, ...)`` sequences that start from ``state``: log-probs, entropies and values."""
        h_actor, h_critic = self.core_sequence(self.encoder(obs), state, is_first)
        out = self.actor(h_actor)
        return self._log_prob(out, actions), self._entropy(out), self.critic(h_critic).squeeze(-1)

    @torch.no_grad()
    def act(  # type: ignore[override]
        self, obs: dict[str, Tensor], state: Tensor, is_first: Tensor
    ) -> tuple[Tensor, Tensor, Tensor, Tensor]:
        """Rollout step: sampled actions, their log-probs, the values and the next recurrent state."""
        h_actor, h_critic, state = self.core(self.encoder(obs), state, is_first)
        out = self.actor(h_actor)
        actions = self._sample(out)
        return actions, self._log_prob(out, actions), self.critic(h_critic).squeeze(-1), state

    @torch.no_grad()
    def value(self, obs: dict[str, Tensor], state: Tensor, is_first: Optional[Tensor] = None) -> Tensor:  # type: ignore[override]
        if is_first is None:
            is_first = torch.zeros(state.shape[0], dtype=torch.bool, device=state.device)
        _, h_critic, _ = self.core(self.encoder(obs), state, is_first)
        return self.critic(h_critic).squeeze(-1)

    @torch.no_grad()
    def policy_step(
        self, obs: dict[str, Tensor], state: Tensor, is_first: Tensor, greedy: bool = True
    ) -> tuple[Tensor, Tensor]:
        """Evaluation step: env actions (mode, or sampled) and the next state."""
        h_actor, _, state = self.core(self.encoder(obs), state, is_first)
        out = self.actor(h_actor)
        if not greedy:
            return self.to_env(self._sample(out)), state
        if not self.nvec:
            return self.to_env(out), state
        if len(self.nvec) == 1:
            return out.argmax(-1), state
        return torch.stack([lg.argmax(-1) for lg in torch.split(out, self.nvec, dim=-1)], dim=-1), state


class RecurrentPolicy:
    """A stateful ``act(obs) -> actions`` for evaluation: carries the recurrent state between calls.

    ``reset(mask)`` starts a new episode in the envs of ``mask`` (all envs without one); the evaluation loop
    (:func:`sheeprl.utils.evaluation.run_episodes`) calls it at the start and wherever an episode ends.
    """

    def __init__(self, agent: RecurrentPPOAgent, greedy: bool = True) -> None:
        self.agent = agent
        self.greedy = greedy
        self.state: Optional[Tensor] = None
        self.is_first: Optional[Tensor] = None

    def reset(self, mask: Optional[Tensor] = None) -> None:
        if mask is None or self.is_first is None:
            self.state, self.is_first = None, None
        else:
            self.is_first = self.is_first | torch.as_tensor(mask, dtype=torch.bool, device=self.is_first.device)

    def __call__(self, obs: dict[str, Tensor]) -> Tensor:
        if self.state is None:
            n = next(iter(obs.values())).shape[0]
            device = next(self.agent.parameters()).device
            self.state = self.agent.initial_state(n, device)
            self.is_first = torch.ones(n, dtype=torch.bool, device=device)
        actions, self.state = self.agent.policy_step(obs, self.state, self.is_first, greedy=self.greedy)
        self.is_first = torch.zeros_like(self.is_first)
        return actions


def build_agent(
    obs_space: gym.spaces.Dict, action_space: gym.Space, cfg: Any, state: dict[str, Any] | None = None
) -> RecurrentPPOAgent:
    agent = RecurrentPPOAgent(obs_space, action_space, cfg.algo)
    if state is not None:
        agent.load_state_dict(state)
    return agent
