"""Replay buffers: preallocated ``(T, n_envs, *)`` TensorDict storage, on-policy and off-policy."""

from sheeprl.data.buffers import ReplayBuffer, SequentialReplayBuffer

__all__ = ["ReplayBuffer", "SequentialReplayBuffer"]
