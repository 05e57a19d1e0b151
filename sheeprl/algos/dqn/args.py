"""DQN's typed arguments. Defaults follow Mnih et al. (2015) converted to policy steps and modern practice
(Adam, Huber loss, gradient clipping); presets in configs/exp/dqn_*.yaml hold the tested settings."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from sheeprl.config import AlgoConfig, ConfigError, OptimizerConfig, RunConfig, arg
from sheeprl.registry import register_algorithm


def dqn_optimizer() -> OptimizerConfig:
    return OptimizerConfig(lr=1e-4, eps=1.5e-4)


@dataclass
class DQNArgs(AlgoConfig):
    name: str = arg("dqn", "algorithm name")
    total_steps: int = arg(1_000_000, "policy steps to train for (env steps summed over all envs and ranks)")
    batch_size: int = arg(32, "transitions per gradient step, summed over the ranks (split evenly)")
    replay_ratio: float = arg(0.25, "gradient steps per policy step (fractions accumulate; 0.25 = one every 4 steps)")
    learning_starts: int = arg(50_000, "policy steps of uniform random actions before the first update")
    train_every: int = arg(
        1,
        "rounds of env steps between training bursts (SB3's train_freq): each burst takes the gradient steps that "
        "replay_ratio accumulated meanwhile; 1 = train after every round",
    )
    gamma: float = arg(0.99, "discount factor")
    tau: float = arg(1.0, "target update: 1 = hard copy, < 1 = Polyak target <- (1 - tau) target + tau online")
    target_update_every: int = arg(2_500, "update the target network every this many gradient steps")
    eps_start: float = arg(1.0, "exploration epsilon at the start")
    eps_end: float = arg(0.01, "exploration epsilon after exploration_steps")
    exploration_steps: int = arg(250_000, "policy steps over which epsilon decays linearly to eps_end")
    double: bool = arg(False, "double DQN: the online network picks the next action, the target evaluates it")
    dueling: bool = arg(False, "dueling head: Q = V + A - mean(A)")
    max_grad_norm: float = arg(10.0, "clip the gradient norm to this value (0 = no clipping)")
    dense_units: int = arg(256, "hidden units per layer of the Q head")
    mlp_layers: int = arg(2, "hidden layers of the Q head (0 = linear on the encoder's features)")
    activation: str = arg("relu", "hidden activation: relu, tanh, elu, silu, gelu")
    cnn_features: int = arg(512, "features of the CNN encoder (its last layer) for pixel keys")
    cnn_encoder: str = arg(
        "auto", "pixel encoder: nature (84x84 Atari), minatar (10x10 planes) or auto (nature from 36x36 pixels up)"
    )
    optimizer: OptimizerConfig = arg(help="Adam settings of the Q-network", factory=dqn_optimizer)


@dataclass
class DQNConfig(RunConfig):
    algo: DQNArgs = arg(help="DQN settings", factory=DQNArgs)


def validate_value_based(cfg: Any, trainers: int) -> None:
    """Checks shared by DQN and Rainbow (``trainers``: the ranks that split each batch)."""
    from sheeprl.utils.optim import require_constant_schedule

    require_constant_schedule(cfg, "algo.optimizer")  # no scheduler is stepped: a schedule would be ignored
    a = cfg.algo
    for key in ("batch_size", "target_update_every", "train_every"):
        if key in a and a[key] < 1:
            raise ConfigError(f"algo.{key} must be >= 1, got {a[key]}")
    for key in ("learning_starts", "mlp_layers", "exploration_steps"):
        if key in a and a[key] < 0:
            raise ConfigError(f"algo.{key} must be >= 0, got {a[key]}")
    if a.replay_ratio <= 0:
        raise ConfigError(f"algo.replay_ratio must be > 0, got {a.replay_ratio}")
    if not 0.0 <= a.gamma <= 1.0:
        raise ConfigError(f"algo.gamma must lie in [0, 1], got {a.gamma}")
    if not 0.0 < a.tau <= 1.0:
        raise ConfigError(f"algo.tau must lie in (0, 1], got {a.tau}")
    if a.max_grad_norm < 0:
        raise ConfigError(f"algo.max_grad_norm must be >= 0, got {a.max_grad_norm}")
    for key in ("eps_start", "eps_end"):
        if key in a and not 0.0 <= a[key] <= 1.0:
            raise ConfigError(f"algo.{key} must lie in [0, 1], got {a[key]}")
    if a.mlp_layers > 0 and a.dense_units < 1:
        raise ConfigError(f"algo.dense_units must be >= 1, got {a.dense_units}")
    if a.cnn_encoder not in ("auto", "nature", "minatar"):
        raise ConfigError(f"algo.cnn_encoder must be 'auto', 'nature' or 'minatar', got '{a.cnn_encoder}'")
    if cfg.buffer.size < 2:
        raise ConfigError(f"buffer.size must be >= 2, got {cfg.buffer.size}")
    if trainers > 0 and a.batch_size % trainers != 0:
        raise ConfigError(
            f"algo.batch_size={a.batch_size} must be divisible by the {trainers} training processes that split it"
        )


def validate(cfg: Any) -> None:
    validate_value_based(cfg, cfg.fabric.devices * cfg.fabric.num_nodes)


register_algorithm(
    "dqn",
    entry="sheeprl.algos.dqn.dqn:main",
    schema=DQNConfig,
    description="Deep Q-Network: epsilon-greedy, target network, Huber loss; --double and --dueling switches",
    action_spaces=("Discrete",),
    validate=validate,
)
