"""TD3's typed arguments (Fujimoto et al., 2018), and DDPG as its configuration with one critic, no target policy
smoothing and no policy delay (the paper's "OurDDPG" baseline)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from sheeprl.config import AlgoConfig, ConfigError, OptimizerConfig, RunConfig, arg
from sheeprl.registry import register_algorithm


@dataclass
class TD3Args(AlgoConfig):
    name: str = arg("td3", "algorithm name")
    total_steps: int = arg(1_000_000, "policy steps to train for (env steps summed over all envs and ranks)")
    batch_size: int = arg(256, "transitions per gradient step, summed over the ranks (split evenly)")
    replay_ratio: float = arg(1.0, "critic gradient steps per policy step (fractions accumulate)")
    learning_starts: int = arg(25_000, "policy steps of uniform random actions before the first update")
    gamma: float = arg(0.99, "discount factor")
    tau: float = arg(0.005, "Polyak coefficient of the target actor and critics")
    policy_delay: int = arg(2, "update the actor and the targets every this many critic steps (DDPG: 1)")
    exploration_noise: float = arg(0.1, "std of the Gaussian exploration noise, in half action ranges")
    policy_noise: float = arg(0.2, "std of the target policy smoothing noise, in half action ranges (DDPG: 0)")
    noise_clip: float = arg(0.5, "clip of the target policy smoothing noise, in half action ranges")
    num_critics: int = arg(2, "Q-functions; the target takes their minimum (clipped double Q; DDPG: 1)")
    dense_units: int = arg(256, "hidden units per layer of actor and critics")
    mlp_layers: int = arg(2, "hidden layers of actor and critics")
    activation: str = arg("relu", "hidden activation: relu, tanh, elu, silu, gelu")
    actor_optimizer: OptimizerConfig = arg(help="optimizer of the actor (Adam by default)", factory=OptimizerConfig)
    critic_optimizer: OptimizerConfig = arg(help="optimizer of the critics (Adam by default)", factory=OptimizerConfig)


@dataclass
class TD3Config(RunConfig):
    algo: TD3Args = arg(help="TD3 settings", factory=TD3Args)


@dataclass
class DDPGConfig(RunConfig):
    algo: TD3Args = arg(
        help="DDPG settings (TD3's schema)",
        factory=lambda: TD3Args(name="ddpg", policy_delay=1, policy_noise=0.0, num_critics=1),
    )


def validate(cfg: Any) -> None:
    """TD3/DDPG checks, run by the CLI before anything is written."""
    from sheeprl.utils.optim import require_constant_schedule

    require_constant_schedule(cfg, "algo.actor_optimizer", "algo.critic_optimizer")
    a = cfg.algo
    for key in ("batch_size", "num_critics", "dense_units", "mlp_layers", "policy_delay"):
        if a[key] < 1:
            raise ConfigError(f"algo.{key} must be >= 1, got {a[key]}")
    if a.replay_ratio <= 0:
        raise ConfigError(f"algo.replay_ratio must be > 0, got {a.replay_ratio}")
    if a.learning_starts < 0:
        raise ConfigError(f"algo.learning_starts must be >= 0, got {a.learning_starts}")
    if not 0.0 <= a.gamma <= 1.0:
        raise ConfigError(f"algo.gamma must lie in [0, 1], got {a.gamma}")
    if not 0.0 < a.tau <= 1.0:
        raise ConfigError(f"algo.tau must lie in (0, 1], got {a.tau}")
    for key in ("exploration_noise", "policy_noise", "noise_clip"):
        if a[key] < 0:
            raise ConfigError(f"algo.{key} must be >= 0, got {a[key]}")
    if a.cnn_keys.encoder:
        raise ConfigError(f"{a.name} learns from vector observations only: set algo.cnn_keys.encoder=[]")
    if cfg.buffer.size < 2:
        raise ConfigError(f"buffer.size must be >= 2, got {cfg.buffer.size}")
    world = cfg.fabric.devices * cfg.fabric.num_nodes
    if a.batch_size % world != 0:
        raise ConfigError(f"algo.batch_size={a.batch_size} must be divisible by the {world} processes that split it")


register_algorithm(
    "td3",
    entry="sheeprl.algos.td3.td3:main",
    schema=TD3Config,
    description="TD3: clipped double Q, delayed policy updates, target policy smoothing",
    action_spaces=("Box",),
    validate=validate,
)

register_algorithm(
    "ddpg",
    entry="sheeprl.algos.td3.td3:main",
    schema=DDPGConfig,
    description="DDPG: TD3 with one critic, no target smoothing and no policy delay",
    action_spaces=("Box",),
    validate=validate,
)
