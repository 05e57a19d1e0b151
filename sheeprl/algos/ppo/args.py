"""PPO's typed arguments: defaults follow CleanRL's ppo.py ("37 implementation details") on CartPole."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Optional

from sheeprl.config import AlgoConfig, ConfigError, OptimizerConfig, RunConfig, ScheduleConfig, arg
from sheeprl.registry import register_algorithm


@dataclass
class PPOArgs(AlgoConfig):
    name: str = arg("ppo", "algorithm name")
    total_steps: int = arg(100_000, "policy steps to train for (env steps summed over all envs and ranks)")
    rollout_steps: int = arg(128, "steps per env in each rollout")
    update_epochs: int = arg(4, "passes over each rollout")
    minibatch_size: int = arg(128, "transitions per gradient step, per rank (must divide rollout_steps * num_envs)")
    gamma: float = arg(0.99, "discount factor")
    gae_lambda: float = arg(0.95, "GAE lambda")
    clip_coef: float = arg(0.2, "surrogate clipping coefficient")
    clip_vloss: bool = arg(True, "clip the value loss around the old value estimate")
    ent_coef: float = arg(0.01, "entropy bonus coefficient")
    vf_coef: float = arg(0.5, "value loss coefficient")
    max_grad_norm: float = arg(0.5, "gradient norm clipping (0 = off)")
    normalize_advantages: bool = arg(True, "normalize advantages per minibatch")
    target_kl: Optional[float] = arg(None, "stop the update epochs early when the approx KL exceeds this")
    optimizer: OptimizerConfig = arg(
        help="optimizer and learning-rate schedule (linear annealing to 0 by default)",
        factory=lambda: OptimizerConfig(lr=2.5e-4, eps=1e-5, schedule=ScheduleConfig("linear")),
    )
    dense_units: int = arg(64, "hidden units per layer of actor and critic")
    mlp_layers: int = arg(2, "hidden layers of actor and critic (0: linear heads on the encoder features)")
    activation: str = arg("tanh", "hidden activation: tanh, relu, elu, silu, gelu")
    ortho_init: bool = arg(True, "orthogonal weight initialization")
    cnn_features_dim: int = arg(512, "features of the CNN encoder (pixel observations)")
    cnn_encoder: str = arg(
        "auto", "pixel encoder: nature (84x84 Atari), minatar (10x10 planes) or auto (nature from 36x36 pixels up)"
    )
    log_std_init: float = arg(0.0, "initial log standard deviation of continuous actions")
    action_squash: str = arg("clip", "continuous actions: 'clip' samples to the bounds, 'tanh' squashes them")


@dataclass
class PPOConfig(RunConfig):
    algo: PPOArgs = arg(help="PPO settings", factory=PPOArgs)


def validate(cfg: Any) -> None:
    """PPO-specific checks, run by the CLI before anything is written."""
    a = cfg.algo
    for key in ("rollout_steps", "update_epochs", "minibatch_size", "dense_units"):
        if a[key] < 1:
            raise ConfigError(f"algo.{key} must be >= 1, got {a[key]}")
    if a.mlp_layers < 0:
        raise ConfigError(f"algo.mlp_layers must be >= 0 (0: linear heads on the encoder), got {a.mlp_layers}")
    batch = a.rollout_steps * cfg.env.num_envs
    if batch % a.minibatch_size != 0:
        raise ConfigError(
            f"algo.minibatch_size={a.minibatch_size} does not divide the rollout of "
            f"rollout_steps * num_envs = {a.rollout_steps} * {cfg.env.num_envs} = {batch} transitions per rank"
        )
    if a.action_squash not in ("clip", "tanh"):
        raise ConfigError(f"algo.action_squash must be 'clip' or 'tanh', got '{a.action_squash}'")
    if a.cnn_encoder not in ("auto", "nature", "minatar"):
        raise ConfigError(f"algo.cnn_encoder must be 'auto', 'nature' or 'minatar', got '{a.cnn_encoder}'")
    if not 0.0 <= a.gamma <= 1.0 or not 0.0 <= a.gae_lambda <= 1.0:
        raise ConfigError("algo.gamma and algo.gae_lambda must lie in [0, 1]")


register_algorithm(
    "ppo",
    entry="sheeprl.algos.ppo.ppo:main",
    schema=PPOConfig,
    description="Proximal Policy Optimization with GAE, clipped surrogate and value losses",
    action_spaces=("Discrete", "MultiDiscrete", "Box"),
    validate=validate,
)


@dataclass
class PPODecoupledArgs(PPOArgs):
    name: str = arg("ppo_decoupled", "algorithm name")
    minibatch_size: int = arg(
        128, "transitions per gradient step, per trainer (must divide rollout_steps * num_envs / trainers)"
    )


@dataclass
class PPODecoupledConfig(RunConfig):
    algo: PPODecoupledArgs = arg(help="decoupled PPO settings", factory=PPODecoupledArgs)


def validate_decoupled(cfg: Any) -> None:
    """PPO's checks, with the rollout split over the trainers (every process but the player)."""
    from sheeprl.cli import _world_size

    a = cfg.algo
    for key in ("rollout_steps", "update_epochs", "minibatch_size", "dense_units"):
        if a[key] < 1:
            raise ConfigError(f"algo.{key} must be >= 1, got {a[key]}")
    if a.mlp_layers < 0:
        raise ConfigError(f"algo.mlp_layers must be >= 0 (0: linear heads on the encoder), got {a.mlp_layers}")
    trainers = _world_size(cfg) - 1
    batch = a.rollout_steps * cfg.env.num_envs
    if trainers >= 1 and (batch % trainers != 0 or (batch // trainers) % a.minibatch_size != 0):
        raise ConfigError(
            f"the rollout of rollout_steps * num_envs = {batch} transitions must split into {trainers} equal "
            f"trainer chunks that algo.minibatch_size={a.minibatch_size} divides"
        )
    if a.action_squash not in ("clip", "tanh"):
        raise ConfigError(f"algo.action_squash must be 'clip' or 'tanh', got '{a.action_squash}'")
    if a.cnn_encoder not in ("auto", "nature", "minatar"):
        raise ConfigError(f"algo.cnn_encoder must be 'auto', 'nature' or 'minatar', got '{a.cnn_encoder}'")
    if not 0.0 <= a.gamma <= 1.0 or not 0.0 <= a.gae_lambda <= 1.0:
        raise ConfigError("algo.gamma and algo.gae_lambda must lie in [0, 1]")


register_algorithm(
    "ppo_decoupled",
    entry="sheeprl.algos.ppo.ppo_decoupled:main",
    schema=PPODecoupledConfig,
    description="PPO with one player process collecting rollouts and N-1 trainer processes updating with DDP",
    action_spaces=("Discrete", "MultiDiscrete", "Box"),
    decoupled=True,
    validate=validate_decoupled,
)
