"""DroQ's typed arguments: SAC's, with the defaults of Hiraoka et al. (2022) on MuJoCo."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from sheeprl.algos.sac.args import SACArgs, validate_offpolicy
from sheeprl.config import ConfigError, RunConfig, arg, bounded_actions, check_budget, round_up, world_size
from sheeprl.registry import register_algorithm


@dataclass
class DroQArgs(SACArgs):
    name: str = arg("droq", "algorithm name")
    replay_ratio: float = arg(20.0, "critic gradient steps per policy step (DroQ's update-to-data ratio G)")
    actor_replay_ratio: float = arg(1.0, "actor and temperature gradient steps per policy step")
    learning_starts: int = arg(5000, "policy steps of uniform random actions before the first update")
    critic_dropout: float = arg(0.01, "dropout in the critics' hidden layers")
    critic_layer_norm: bool = arg(True, "layer norm in the critics' hidden layers")


@dataclass
class DroQConfig(RunConfig):
    algo: DroQArgs = arg(help="DroQ settings", factory=DroQArgs)


def validate(cfg: Any) -> None:
    """DroQ-specific checks, run by the CLI before anything is written."""
    validate_offpolicy(cfg, world_size(cfg))
    if cfg.algo.critic_dropout <= 0 or not cfg.algo.critic_layer_norm:
        raise ConfigError("DroQ's critics need algo.critic_dropout > 0 and algo.critic_layer_norm=true (else use sac)")
    if cfg.algo.actor_replay_ratio <= 0:
        raise ConfigError(f"algo.actor_replay_ratio must be > 0, got {cfg.algo.actor_replay_ratio}")
    per_step = cfg.env.num_envs * world_size(cfg)
    check_budget(cfg, round_up(cfg.algo.total_steps, per_step), f"steps of {per_step} envs", cfg.algo.learning_starts)


register_algorithm(
    "droq",
    entry="sheeprl.algos.droq.droq:main",
    schema=DroQConfig,
    description="DroQ: SAC with dropout + layer-norm Q-functions at a high replay ratio",
    action_spaces=("Box",),
    validate=validate,
    check_env=bounded_actions,
)
