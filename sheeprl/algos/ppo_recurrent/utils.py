"""What recurrent PPO alone needs outside its loop: rollout -> sequences, and the evaluation policy."""

from __future__ import annotations

from typing import Any

import gymnasium as gym
import torch
from tensordict import TensorDict

from sheeprl.algos.ppo_recurrent.agent import RecurrentPolicy, build_agent
from sheeprl.registry import register_evaluation


def split_into_sequences(data: TensorDict, sequence_length: int) -> TensorDict:
    """Cut a ``(T, N)`` rollout into ``(L, S)`` sequences of ``L = sequence_length`` steps, ``S = N * ceil(T / L)``.

    Sequence ``j * N + n`` holds steps ``[j * L, (j + 1) * L)`` of env ``n``. Where the rollout ends inside a
    sequence the rest is zero padding; the added ``mask`` is 1 on real steps and 0 on padding, so the losses
    give padding zero weight. Episode starts inside a sequence stay where they are (``is_first``): the model
    resets its state there. A sequence starts from the stored recurrent state of its first step.
    """
    T, N = data.batch_size[:2]
    L = int(sequence_length)
    chunks = -(-T // L)
    pad = chunks * L - T
    data = data.clone(recurse=False)
    data["mask"] = torch.ones(T, N, device=data.device)
    if pad:
        data = data.apply(lambda x: torch.cat([x, x.new_zeros(pad, *x.shape[1:])]), batch_size=[T + pad, N])
    return data.apply(
        lambda x: x.reshape(chunks, L, N, *x.shape[2:]).transpose(0, 1).reshape(L, chunks * N, *x.shape[2:]),
        batch_size=[L, chunks * N],
    )


@register_evaluation("ppo_recurrent")
def load_policy(
    cfg: Any,
    state: dict[str, Any],
    observation_space: gym.spaces.Dict,
    action_space: gym.Space,
    device: torch.device | str = "cpu",
    stochastic: bool = False,
) -> RecurrentPolicy:
    """Rebuild the agent of a checkpoint; returns a stateful ``act(obs) -> env actions`` with a ``reset`` hook."""
    agent = build_agent(observation_space, action_space, cfg, state["agent"]).to(device).eval()
    return RecurrentPolicy(agent, greedy=not stochastic)
