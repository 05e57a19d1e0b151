"""What A2C needs outside its loop: the evaluation policy (A2C's agent is PPO's actor-critic)."""

from __future__ import annotations

from sheeprl.algos.ppo.utils import load_policy
from sheeprl.registry import register_evaluation

register_evaluation("a2c")(load_policy)

__all__ = ["load_policy"]
