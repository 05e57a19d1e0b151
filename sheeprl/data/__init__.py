"""Replay buffers: preallocated ``(T, n_envs, *)`` TensorDict storage, on-policy and off-policy."""

from sheeprl.data.buffers import ReplayBuffer, SequentialReplayBuffer
from sheeprl.data.frames import FrameReplayBuffer

__all__ = ["FrameReplayBuffer", "ReplayBuffer", "SequentialReplayBuffer"]
